"""When ``--overwrite`` may replace a dataset folder: shared by ``duplus data get`` and ``convert``.

Replacing an output deletes the whole folder, so it is done only to an empty folder or to one this
tool wrote before; ``-o ~/data`` would otherwise delete everything in ``~/data``, the source or the
archive cache among it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..errors import DuPLUSError


def refuse_output_in_the_way(
    output: Path,
    inputs: Sequence[Path],
    overwrite: bool,
    written_by_us: Callable[[Path], bool],
    not_ours: str,
    error: type[DuPLUSError],
) -> None:
    """Refuse, with ``error``, an existing ``output`` that ``--overwrite`` may not delete without loss:
    a file or link, a folder holding one of ``inputs``, or a non-empty folder ``written_by_us``
    does not recognise (``not_ours`` says why, in the message)."""
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        kind = "a link" if output.is_symlink() else "a file"
        raise error(f"the output '{output}' is {kind}, not a folder; choose an empty or new folder")
    if not output.exists():
        return
    for folder in inputs:
        if folder.resolve().is_relative_to(output.resolve()):
            raise error(f"'{folder}' lies inside the output '{output}', which would be replaced; "
                        "choose an empty or new folder")
    if not overwrite:
        raise error(f"'{output}' exists; choose another folder or pass --overwrite")
    if any(output.iterdir()) and not written_by_us(output):
        raise error(f"'{output}' {not_ours}, so --overwrite does not delete it; choose an empty or new folder")
