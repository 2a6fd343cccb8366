"""Readers for the layouts public datasets ship in, converted to Decathlon folders plus mapping files.

``duplus data convert --layout NAME SRC -o DST`` reads a downloaded dataset as its authors ship it
and writes, under ``DST``, one Decathlon folder per image kind (``DST/ct``, ``DST/mr``,
``DST/pet``, ``DST/t1``...), each with one ``mapping_<modality>_<region>.json`` per context its
labels annotate, so ``duplus train`` reads it with ``kind: decathlon`` unchanged::

    datasets:
      - {kind: decathlon, path: data/amos/ct, mapping: data/amos/ct/mapping_ct_abdomen.json}

``DST/conversion.json`` records the layout, the source, the parts, the label values found, what was
left out and why, and the licence to check. The output is written beside ``DST`` and renamed into
place when complete; a refused or interrupted conversion leaves nothing behind.

Label values that stand for something the ontology lacks are listed under ``ignore`` in the mapping
(the description says which); a value that the layout does not know at all is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .common import ConversionReport, ConvertOptions, LayoutError
from ..output_folder import refuse_output_in_the_way

__all__ = ["LAYOUTS", "ConvertOptions", "ConversionReport", "LayoutError", "convert_dataset"]


def _load(module: str) -> Callable[[Path, Path, ConvertOptions], ConversionReport]:
    def run(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
        from importlib import import_module

        return import_module(f"{__name__}.{module}").convert(source, output, options)
    return run


# name -> (module, one line for --help and the docs)
LAYOUTS: dict[str, tuple[str, str]] = {
    "totalsegmentator": ("totalsegmentator", "TotalSegmentator dataset: sNNNN/ct.nii.gz + segmentations/<structure>.nii.gz, meta.csv"),
    "amos": ("amos", "AMOS22: imagesTr/labelsTr (+ imagesVa/labelsVa) and dataset.json, CT (ids < 500) and MR (ids >= 500)"),
    "btcv": ("btcv", "BTCV Abdomen: RawData/Training/img/imgNNNN.nii.gz + label/labelNNNN.nii.gz, 13 organs"),
    "chaos": ("chaos", "CHAOS: CT/<id>/DICOM_anon + Ground PNGs; MR/<id>/T1DUAL (in/out phase), T2SPIR"),
    "kits": ("kits", "KiTS19/21/23: case_NNNNN/imaging.nii.gz + segmentation.nii.gz (or aggregated_MAJ_seg.nii.gz)"),
    "lits": ("lits", "LiTS: volume-N.nii + segmentation-N.nii (1 liver, 2 tumour)"),
    "hecktor": ("hecktor", "HECKTOR 2022: imagesTr/<case>__CT.nii.gz, __PT.nii.gz, labelsTr/<case>.nii.gz (1 GTVp, 2 GTVn)"),
    "brats": ("brats", "BraTS 2021 (<case>_t1/_t1ce/_t2/_flair/_seg) or 2023 (<case>-t1n/-t1c/-t2w/-t2f/-seg)"),
    "msd": ("msd", "Medical Segmentation Decathlon TaskNN_* folder (ready mapping files for each task)"),
}


def convert_dataset(layout: str, source: str | os.PathLike[str], output: str | os.PathLike[str],
                    options: ConvertOptions | None = None, overwrite: bool = False) -> ConversionReport:
    """Convert ``source`` (in ``layout``) into ``output``; returns what was written.

    Raises :class:`LayoutError` (a :class:`~DuPLUSLib.training.decathlon.DatasetError`) naming the
    file or folder at fault; then nothing is left at ``output``.
    """
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout '{layout}'; choose one of: {', '.join(LAYOUTS)}")
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise LayoutError(f"source folder '{source}' does not exist or is not a folder")
    _refuse_output_in_the_way(source, output, overwrite)
    if output.resolve().is_relative_to(source.resolve()):
        raise LayoutError(f"the output '{output}' lies inside the source '{source}'; choose a folder outside it")
    options = options or ConvertOptions()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}-converting-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the dataset from the other users of a GPU box
    try:
        report = _load(LAYOUTS[layout][0])(source, staging, options)
        report.layout, report.source = layout, str(source.resolve())
        (staging / "conversion.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
        if output.exists():
            _refuse_output_in_the_way(source, output, overwrite)  # again: it may have been filled meanwhile
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _refuse_output_in_the_way(source: Path, output: Path, overwrite: bool) -> None:
    refuse_output_in_the_way(output, [source], overwrite, _is_conversion,
                             "is not the output of an earlier conversion (it has no conversion.json)", LayoutError)


def _is_conversion(folder: Path) -> bool:
    try:
        report = json.loads((folder / "conversion.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "layout" in report
