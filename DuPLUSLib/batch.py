"""Whole cohorts: many inputs, one model load, one output per case, a summary, resumable and sharded.

    cases = expand_inputs(["scans/", "extra/ct.nrrd"], csv_path=None)
    run_batch(cases, ["CT/abdomen/liver"], "out/", format="nifti", shard=(0, 4))

* **Inputs.** A file is one case; a folder of image files gives one case per file; a folder that
  holds DICOM series (directly or in subfolders) gives one case per image series; a CSV names its
  cases in an ``input`` column (paths relative to the CSV), with optional ``case_id`` and
  ``series`` (SeriesInstanceUID) columns. Cases keep the order they are listed in; that order
  numbers them (``case_index``) for sharding and for the summary.
* **Outputs.** ``OUTDIR/<case_id><suffix>`` in the chosen format (``formats.py``), and
  ``OUTDIR/<case_id>.json``, the case's report, written last: a case is complete when its report
  and every file the report lists exist, and the report's ``request`` (the prompt keys, and the
  model's name and weights sha256) is this run's. A rerun skips complete cases and redoes, saying
  so, those asked for with other prompts or another model (``--overwrite`` redoes them all).
* **Failures.** A case that fails is recorded in the summary with its error, and the run goes on.
  Nothing of a failed case is left under a real name (each file is written atomically; the report,
  written last, is what marks a case done).
* **Summary.** ``OUTDIR/summary.csv``: one row per case and structure (volume in ml, confidence,
  found, seconds; then the ml its model's post-processing dropped where it keeps the largest part,
  and ``check`` where that is enough to look), one row for a failed case. Rewritten after every case.
* **Shards.** ``shard=(K, N)`` takes the cases whose index is K modulo N and writes
  ``summary.shard-K-of-N.csv``; :func:`merge_summaries` joins the N of them into ``summary.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import CancelledError, DuPLUSError, InputImageError, OutputPathError
from .imageio import IMAGE_SUFFIXES, atomic_output

__all__ = [
    "BatchCase",
    "BatchError",
    "SUMMARY_COLUMNS",
    "case_is_complete",
    "expand_inputs",
    "is_batch_request",
    "merge_summaries",
    "parse_shard",
    "request_change",
    "run_batch",
    "select_shard",
]

SUMMARY_COLUMNS = ["case_index", "case_id", "input", "status", "structure", "prompt", "volume_ml", "confidence",
                   "found", "seconds", "output", "error", "dropped_ml", "check"]
_COLUMNS_ADDED_SINCE = ("dropped_ml", "check")  # a shard summary written before them still merges
log = logging.getLogger("duplus.batch")
NOT_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "RWV", "DOC"}


class BatchError(DuPLUSError, ValueError):
    """A batch request that cannot run: a bad case list, CSV, shard or output folder."""


@dataclass(frozen=True)
class BatchCase:
    index: int  # position in the full case list (sharding and summary order)
    case_id: str
    input: Path
    series_uid: str | None = None
    is_dicom: bool = False


# ------------------------------------------------------------------------------------ inputs
def is_batch_request(inputs: Sequence[str], csv_path: str | None, output: str, shard: str | None) -> bool:
    """Whether ``duplus segment`` runs as a batch: more than one input, a CSV, a shard, an output that
    ends with a path separator, or one folder that is not itself a DICOM series folder.

    One image file or one DICOM series folder with ``-o FILE`` stays the single-case command.
    """
    if csv_path or shard or len(inputs) != 1 or output.endswith(("/", os.sep)):
        return True
    path = Path(inputs[0])
    return path.is_dir() and not _image_series_in(path)


def expand_inputs(inputs: Sequence[str], csv_path: str | os.PathLike[str] | None = None,
                  outdir: str | os.PathLike[str] | None = None) -> list[BatchCase]:
    """Every case the inputs name, in order, with unique case ids (see the module doc).

    Files and series inside ``outdir`` are not inputs, so a rerun into a folder below the inputs
    does not take its own outputs for new cases; nor are ``.seg.nrrd`` files, which are results.
    """
    found: list[tuple[str, Path, str | None, bool]] = []
    if csv_path is not None:
        found += _cases_from_csv(Path(csv_path))
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise InputImageError(f"input '{path}' does not exist")
        if path.is_file():
            found.append((_file_case_id(path), path, None, False))
        else:
            found += _cases_in_folder(path)
    if outdir is not None:
        skip = Path(outdir).resolve()
        found = [f for f in found if skip != f[1].resolve() and skip not in f[1].resolve().parents]
    if not found:
        raise BatchError("no cases found in the inputs; give image files (.nrrd, .nii.gz, .mha), "
                         "folders of them, or folders of DICOM series")
    seen: dict[str, Path] = {}
    for case_id, path, _, _ in found:
        if case_id in seen:
            raise BatchError(
                f"case id '{case_id}' comes from two inputs: '{seen[case_id]}' and '{path}'; "
                "name the cases in a CSV (--inputs, with a case_id column) or rename one"
            )
        seen[case_id] = path
    return [BatchCase(i, case_id, path, series, dicom) for i, (case_id, path, series, dicom) in enumerate(found)]


def _safe_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "case"


def _file_case_id(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return _safe_id(name[: -len(suffix)])
    return _safe_id(path.stem)


def _image_series_in(folder: Path) -> list[tuple[str, str | None]]:
    """(SeriesInstanceUID, SeriesNumber) of each image series whose files lie directly in ``folder``."""
    import SimpleITK as sitk

    series = []
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns about every folder without DICOM
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    for uid in uids:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        modality, number = _modality_of(files[0]) if files else (None, None)
        if modality not in NOT_IMAGE_MODALITIES:
            series.append((uid, number))
    return series


def _modality_of(file: str) -> tuple[str | None, str | None]:
    try:
        import pydicom

        header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["Modality", "SeriesNumber"])
        return str(header.get("Modality", "")) or None, str(header.get("SeriesNumber", "")) or None
    except Exception:  # not readable by pydicom: let the image reader decide later
        return None, None


def _cases_in_folder(root: Path) -> list[tuple[str, Path, str | None, bool]]:
    cases = []
    images = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
                    and not p.name.startswith(".") and not p.name.lower().endswith(".seg.nrrd"))
    cases += [(_file_case_id(p), p, None, False) for p in images]
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        folder_path = Path(folder)
        series = _image_series_in(folder_path)
        relative = folder_path.relative_to(root)
        base = _safe_id("_".join(relative.parts) if relative.parts else root.name)
        for uid, number in series:
            suffix = "" if len(series) == 1 else f"_S{number or uid.rsplit('.', 1)[-1]}"
            cases.append((base + suffix, folder_path, uid if len(series) > 1 else None, True))
    return cases


def _cases_from_csv(path: Path) -> list[tuple[str, Path, str | None, bool]]:
    if not path.is_file():
        raise BatchError(f"case list '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise BatchError(f"case list '{path}' is not a readable UTF-8 CSV: {error}") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "input" not in columns:
        raise BatchError(
            f"case list '{path}' has no 'input' column; its columns are: {', '.join(columns) or '(none)'}. "
            "Put one image file or DICOM folder per row in a column named input (case_id and series are optional)"
        )
    cases = []
    for row_number, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("input"):
            raise BatchError(f"case list '{path}', row {row_number}: the input cell is empty")
        source = Path(row["input"])
        source = source if source.is_absolute() else path.parent / source
        if not source.exists():
            raise BatchError(f"case list '{path}', row {row_number}: input '{row['input']}' does not exist")
        case_id = row.get("case_id") or ""
        if case_id and (case_id != _safe_id(case_id)):
            raise BatchError(f"case list '{path}', row {row_number}: case id '{case_id}' must use only letters, "
                             "digits, '.', '_' and '-' (it names the output files)")
        if source.is_dir():
            series = row.get("series") or None
            if series is None:
                found = _image_series_in(source)
                if len(found) != 1:
                    raise BatchError(
                        f"case list '{path}', row {row_number}: '{source}' holds {len(found)} DICOM image series; "
                        "give one folder per series or its SeriesInstanceUID in a series column")
            cases.append((case_id or _safe_id(source.name), source, series, True))
        else:
            cases.append((case_id or _file_case_id(source), source, None, False))
    return cases


# ------------------------------------------------------------------------------------ shards
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with 0 <= K < N: the cases whose index is K modulo N."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise BatchError(f"shard '{text}' must be K/N, e.g. --shard 0/4 (the first of four shards)")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 0 <= k < n:
        raise BatchError(
            f"shard {k}/{n} is out of range: K counts from 0 to N-1 (--shard 0/{max(n, 1)} ... {max(n, 1) - 1}/{max(n, 1)}); "
            "with a Slurm array use --array=0-(N-1) and --shard $SLURM_ARRAY_TASK_ID/N"
        )
    return k, n


def select_shard(cases: Sequence[BatchCase], shard: tuple[int, int] | None) -> list[BatchCase]:
    if shard is None:
        return list(cases)
    k, n = shard
    return [case for case in cases if case.index % n == k]


def summary_path(outdir: Path, shard: tuple[int, int] | None) -> Path:
    return outdir / ("summary.csv" if shard is None else f"summary.shard-{shard[0]}-of-{shard[1]}.csv")


# ------------------------------------------------------------------------------------ outputs
def check_outdir(outdir: str | os.PathLike[str]) -> Path:
    """The batch output folder: made if missing (its parent must exist), refused if it is a file."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OutputPathError(
            f"'{outdir}' is a file; a batch run writes one output per case into a folder: give a folder name with -o"
        )
    if not outdir.exists():
        if outdir.name.lower().endswith((".seg.nrrd", ".nrrd", ".nii", ".nii.gz", ".dcm")):
            raise OutputPathError(
                f"'{outdir}' looks like a file name, but this is a batch (several cases): give -o a folder, "
                "which gets one output per case and summary.csv"
            )
        if not outdir.parent.is_dir():
            raise OutputPathError(f"cannot make output folder '{outdir}': folder '{outdir.parent}' does not exist")
        try:
            outdir.mkdir()
        except OSError as error:
            raise OutputPathError(f"cannot make output folder '{outdir}': {error.strerror or error}") from None
    if not os.access(outdir, os.W_OK):
        raise OutputPathError(f"cannot write into '{outdir}': not writable")
    return outdir


def case_output(outdir: Path, case: BatchCase, format: str) -> Path:
    from .formats import default_suffix

    return outdir / f"{case.case_id}{default_suffix(format)}"


def case_report(outdir: Path, case: BatchCase) -> Path:
    return outdir / f"{case.case_id}.json"


def case_is_complete(outdir: Path, case: BatchCase, format: str | None = None, split: bool = False,
                     request: dict | None = None) -> dict | None:
    """The case's report when it and every file it lists exist (in ``format``, when given) and, when
    ``request`` is given, it was segmented for that request (:func:`request_change`); else None."""
    report = case_report(outdir, case)
    if not report.is_file():
        return None
    try:
        summary = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if format is not None and (summary.get("format"), bool(summary.get("split"))) != (format, split):
        return None
    files = summary.get("files") or [summary.get("output")]
    if not files or not all(f and Path(f).exists() for f in files):
        return None
    if request is not None and request_change(summary, request) is not None:
        return None
    return summary


def request_change(report: dict, request: dict) -> str | None:
    """What differs between ``request`` (``{"prompts": [keys], "model": identity}``) and what the
    case of ``report`` was segmented for, in words; None when nothing does.

    Reports written before batches recorded their ``request`` still name their prompts
    (``segments[].prompt``) and their model's name (``model.name``), though not its weights'
    sha256. Those two are compared and a case that matches is kept: redoing a whole cohort after an
    upgrade, for a difference no such report can show, would cost hours, and a model retrained
    under the same name is the one change that goes unseen. A report that names neither cannot be
    told apart from another request, and its case is redone.
    """
    recorded = report.get("request")
    if isinstance(recorded, dict):
        prompts, model = recorded.get("prompts"), recorded.get("model")
    else:
        segments = report.get("segments") if isinstance(report.get("segments"), list) else []
        prompts = [entry.get("prompt") for entry in segments if isinstance(entry, dict)] or None
        name = report["model"].get("name") if isinstance(report.get("model"), dict) else None
        model = dict(request["model"], name=name) if name else None  # the weights are not recorded: the name is all
    if not isinstance(prompts, list) or not isinstance(model, dict):
        return "its report does not say which prompts and model it was segmented with"
    if prompts != list(request["prompts"]):
        return f"the prompts changed (were {', '.join(map(str, prompts))}; now {', '.join(request['prompts'])})"
    if model != request["model"]:
        return f"the model changed (was {_describe_model(model)}; now {_describe_model(request['model'])})"
    return None


def _describe_model(identity: dict) -> str:
    weights = str(identity.get("sha256") or "unknown")[:12]
    adapter = f", adapter {str(identity['adapter_sha256'])[:12]}" if identity.get("adapter_sha256") else ""
    return f"'{identity.get('name')}', weights {weights}{adapter}"


def _model_identity(name: str | None, files: dict | None, training: dict | None) -> dict:
    """What names a model in a case's request: its name, the sha256 of its weights as its config.json
    records it (a model retrained under the same name differs there), and its adapter's, if any."""
    identity = {"name": name, "sha256": ((files or {}).get("weights") or {}).get("sha256")}
    adapter = (training or {}).get("adapter")
    if isinstance(adapter, dict) and adapter.get("sha256"):
        identity["adapter_sha256"] = adapter["sha256"]
    return identity


def _local_model_identity(model, adapter) -> dict | None:
    """The identity of the model a local run would load, as its loaded bundle gives it, from its
    config.json (and adapter.json) alone: no torch and no weights read, so a rerun that finds every
    case done loads nothing. None when they cannot be read; loading the model then says why."""
    from importlib import resources

    # bundle.default_model_dir, which would import torch
    folder = Path(model) if model else Path(str(resources.files("DuPLUSLib").joinpath("resources/models/default")))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        name, training = config["name"], config.get("training")
        if adapter is not None:  # as training.adapters.load_adapter names and records it
            info = json.loads((Path(adapter) / "adapter.json").read_text(encoding="utf-8"))
            name, training = f"{name}+{info['name']}", {"adapter": {"sha256": info["files"]["weights"]["sha256"]}}
        return _model_identity(name, config.get("files"), training)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _rows_of(case: BatchCase, summary: dict) -> list[dict]:
    output = ";".join(summary.get("files") or [summary.get("output", "")])
    return [
        {"case_index": case.index, "case_id": case.case_id, "input": str(case.input), "status": "done",
         "structure": entry["structure"], "prompt": entry["prompt"], "volume_ml": entry["volume_ml"],
         "confidence": "" if entry["confidence"] is None else entry["confidence"],
         "found": "yes" if entry["found"] else "no",
         "seconds": summary.get("seconds", ""),
         "dropped_ml": entry.get("dropped_ml", "") if entry.get("largest_part_only") else "",  # older reports lack it
         "check": "yes" if entry.get("check") else "",
         "output": output, "error": ""}
        for entry in summary["segments"]
    ]


def _failed_row(case: BatchCase, error: BaseException, seconds: float) -> dict:
    message = f"{type(error).__name__}: {error}".replace("\n", " ")
    return {"case_index": case.index, "case_id": case.case_id, "input": str(case.input), "status": "failed",
            "structure": "", "prompt": "", "volume_ml": "", "confidence": "", "found": "",
            "seconds": round(seconds, 2), "output": "", "error": message, "dropped_ml": "", "check": ""}


def write_summary(path: Path, rows: Sequence[dict]) -> Path:
    ordered = sorted(rows, key=lambda r: (int(r["case_index"]), str(r["structure"])))
    with atomic_output(path, overwrite=True) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(ordered)
    return path


def read_summary(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        older = [c for c in SUMMARY_COLUMNS if c not in _COLUMNS_ADDED_SINCE]
        if reader.fieldnames not in (SUMMARY_COLUMNS, older):
            raise BatchError(f"'{path}' is not a duplus summary (columns {reader.fieldnames})")
        return [dict.fromkeys(_COLUMNS_ADDED_SINCE, "") | row for row in reader]


def merge_summaries(outdir: str | os.PathLike[str]) -> Path:
    """Join ``summary.shard-K-of-N.csv`` for K = 0..N-1 into ``summary.csv``, ordered by case."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise BatchError(f"'{outdir}' is not a folder of batch outputs")
    shards = {}
    for path in outdir.glob("summary.shard-*-of-*.csv"):
        match = re.fullmatch(r"summary\.shard-(\d+)-of-(\d+)\.csv", path.name)
        if match:
            shards.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
    if not shards:
        raise BatchError(f"'{outdir}' holds no shard summaries (summary.shard-K-of-N.csv)")
    if len(shards) > 1:
        raise BatchError(f"'{outdir}' holds shard summaries of different shard counts ({', '.join(map(str, sorted(shards)))}); "
                         "remove the stale ones")
    (n, found), = shards.items()
    missing = [k for k in range(n) if k not in found]
    if missing:
        raise BatchError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} have not written their summary yet; "
                         "run them (or wait for them) before merging")
    rows = [row for k in range(n) for row in read_summary(found[k])]
    return write_summary(outdir / "summary.csv", rows)


# ------------------------------------------------------------------------------------ the run
CaseProgress = Callable[[BatchCase, int, int, str, float, str], None]


@dataclass
class BatchResult:
    summary: Path
    cases: int
    done: int
    skipped: int
    failed: int
    rows: list[dict]
    redone: int = 0  # cases found complete, but for other prompts or another model, so segmented again


def run_batch(
    cases: Sequence[BatchCase],
    prompts: Sequence[str],
    outdir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    adapter: str | os.PathLike[str] | None = None,
    segmenter=None,
    device: str = "auto",
    modality: str | None = None,
    format: str = "seg.nrrd",
    split: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: CaseProgress | None = None,
    on_case: Callable[[BatchCase, str, dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    server=None,
) -> BatchResult:
    """Segment every case of this shard into ``outdir``, loading the model once (see the module doc).

    ``progress(case, position, count, stage, fraction, message)`` reports within a case;
    ``on_case(case, status, info)`` once per case with status ``done``, ``skipped`` or ``failed``.
    With ``server`` (a :class:`~DuPLUSLib.remote.ServerClient`) each case runs on that server
    instead, one after another, and the outputs, reports and summary are the same; no model is
    loaded here and PyTorch is not needed.

    Each report records its ``request``: the prompt keys and the model's identity (name, weights
    sha256; the server's, from its ``/info``). A finished case whose request differs from this run's
    is segmented again, with a warning on the ``duplus.batch`` log, and counted in ``redone``.
    """
    from .formats import check_format_input
    from .ontology import load_ontology

    keys = [p.key for p in load_ontology().parse_many(prompts, modality)]  # a typo fails now, before any case
    not_dicom = [c for c in cases if not c.is_dicom]
    if format == "dicom-seg" and not_dicom:
        names = ", ".join(f"'{c.input}'" for c in not_dicom[:5]) + (" ..." if len(not_dicom) > 5 else "")
        check_format_input(format, names, False)
    outdir = check_outdir(outdir)
    selected = select_shard(cases, shard)
    rows: list[dict] = []
    counts = {"done": 0, "skipped": 0, "failed": 0, "redone": 0}
    summary = summary_path(outdir, shard)
    identity: dict | None = None

    def request() -> dict:
        """This run's request; the model's identity is found once, and only when a case needs it."""
        nonlocal identity, segmenter
        if identity is None and server is not None:
            found = server.check().get("model") or {}  # a wrong key, address or protocol stops the run here
            identity = _model_identity(found.get("name"), {"weights": {"sha256": found.get("sha256")}}, None)
        elif identity is None:
            identity = None if segmenter is not None else _local_model_identity(model, adapter)
            if identity is None:
                segmenter = segmenter or _load_segmenter(model, adapter, device)
                config = segmenter.bundle.config
                identity = _model_identity(config.name, config.files, config.training)
        return {"prompts": keys, "model": identity}

    for position, case in enumerate(selected):
        if cancel and cancel():
            raise CancelledError("batch cancelled")
        finished = None if overwrite else case_is_complete(outdir, case, format, split)
        changed = None if finished is None else request_change(finished, request())
        if finished is not None and changed is None:
            rows += _rows_of(case, finished)
            counts["skipped"] += 1
            if on_case:
                on_case(case, "skipped", finished)
            continue
        if changed is not None:
            counts["redone"] += 1
            log.warning("%s: segmenting it again: %s since its report was written", case.case_id, changed)
        if server is None and segmenter is None:  # once, and only when a case needs it; a bad model stops the run
            segmenter = _load_segmenter(model, adapter, device)
        elif server is not None:
            request()  # found once: a wrong key, address or protocol stops the run before the first upload
        started = time.perf_counter()
        try:
            def case_progress(stage: str, fraction: float, message: str, case=case, position=position) -> None:
                if progress:
                    progress(case, position, len(selected), stage, fraction, message)

            result = _segment_case(case, prompts, case_output(outdir, case, format), segmenter, server,
                                   modality=modality, overwrite=True, progress=case_progress, cancel=cancel,
                                   series_uid=case.series_uid, format=format, split=split, report=None)
            result["seconds"] = round(time.perf_counter() - started, 2)
            result["case_id"] = case.case_id
            result["request"] = request()
            with atomic_output(case_report(outdir, case), overwrite=True) as temporary:
                temporary.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            rows += _rows_of(case, result)
            counts["done"] += 1
            if on_case:
                on_case(case, "done", result)
        except (CancelledError, KeyboardInterrupt):
            write_summary(summary, rows)
            raise
        except (DuPLUSError, MemoryError, OSError, ValueError, RuntimeError) as error:
            rows.append(_failed_row(case, error, time.perf_counter() - started))
            counts["failed"] += 1
            if on_case:
                on_case(case, "failed", {"error": type(error).__name__, "message": str(error)})
        write_summary(summary, rows)
    write_summary(summary, rows)
    if counts["redone"]:
        log.warning("%d case(s) segmented again because the prompts or the model changed since their reports "
                    "were written", counts["redone"])
    return BatchResult(summary, len(selected), counts["done"], counts["skipped"], counts["failed"], rows,
                       counts["redone"])


def _segment_case(case: BatchCase, prompts, output: Path, segmenter, server, **options) -> dict:
    """One case here (``segmenter``) or on the server (``server``): the same options, the same summary."""
    if server is not None:
        from .remote import segment_file_remote

        return segment_file_remote(server, case.input, prompts, output, **options)
    from .inference import segment_file

    return segment_file(case.input, prompts, output, segmenter=segmenter, **options)


def _load_segmenter(model, adapter, device):
    from .inference import Segmenter, _load_model

    return Segmenter(_load_model(model, adapter), device=device)
