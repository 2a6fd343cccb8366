"""The ``duplus`` command: parses arguments and calls the library, nothing more.

Each subcommand module offers ``register(subparsers)``; they are imported only when needed so that
``duplus prompts`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from .errors import CancelledError, DuPLUSError

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(DuPLUSError, ValueError):
    """Arguments that do not go together (argparse checks each alone)."""

# Subcommands that live with their own package; each module offers register(subparsers).
# Only the module of the command being run is imported, so `duplus prompts` never loads torch.
PLUGGED_COMMANDS = {
    "phantom": "DuPLUSLib.phantoms.cli",
    "train": "DuPLUSLib.training.cli",
    "finetune": "DuPLUSLib.training.cli",
    "evaluate": "DuPLUSLib.training.evaluate",
    "prognosis": "DuPLUSLib.prognosis.cli",
    "data": "DuPLUSLib.datasets.cli",
    "serve": "DuPLUSLib.server.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``command`` given, only that plugged command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="duplus",
        description="DuPLUS: text-prompted universal 3D segmentation and head-and-neck prognosis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prompts = sub.add_parser("prompts", help="list the modality > region > structure ontology")
    prompts.add_argument("--json", action="store_true", help="print the ontology as JSON")
    prompts.add_argument("--modality", help="only this modality")
    prompts.set_defaults(run=_run_prompts)

    segment = sub.add_parser(
        "segment", help="segment image files, DICOM series or a whole cohort with text prompts",
        description="One input with -o FILE writes one segmentation. Several inputs, a folder of images or of "
                    "DICOM series, or --inputs cases.csv, with -o OUTDIR, write one output per case and "
                    "OUTDIR/summary.csv, loading the model once; a rerun skips finished cases.")
    segment.add_argument("input", nargs="*",
                         help="NRRD, NIfTI, MHA files, DICOM series folders, or folders holding either")
    segment.add_argument("--inputs", metavar="CSV",
                         help="a case list: an 'input' column (paths relative to the CSV), optional 'case_id' "
                              "and 'series' columns")
    segment.add_argument("-p", "--prompt", action="append", required=True, dest="prompts",
                         help="MODALITY/REGION/STRUCTURE, e.g. CT/abdomen/liver; '*' for every "
                              "structure of a region; repeat for several")
    segment.add_argument("--series", metavar="UID", help="SeriesInstanceUID, when the DICOM folder holds several")
    segment.add_argument("-o", "--output", required=True,
                         help="output file (one input), or output folder (a batch)")
    segment.add_argument("--format", choices=["seg.nrrd", "nifti", "dicom-seg"],
                         help="seg.nrrd (Slicer), nifti (multi-label .nii.gz + .labels.json), or dicom-seg "
                              "(DICOM input only); default: from the output's ending, else seg.nrrd")
    segment.add_argument("--split", action="store_true",
                         help="with --format nifti: one .nii.gz per structure in a folder, as TotalSegmentator")
    segment.add_argument("--shard", metavar="K/N",
                         help="process only the cases whose index is K modulo N (K = 0..N-1); "
                              "then 'duplus merge-shards OUTDIR'")
    segment.add_argument("--model", help="model folder (default: the bundled model)")
    segment.add_argument("--adapter", help="adapter folder from 'duplus finetune', applied on top of --model")
    segment.add_argument("--modality", help="modality for prompts that name only a structure")
    segment.add_argument("--report", help="write a JSON report here")
    segment.add_argument("--preview", help="write a three-plane PNG preview here")
    segment.add_argument("--probabilities", help="write one probability map per prompt into this folder")
    segment.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    segment.add_argument("--progress", default="bar", choices=["bar", "json", "none"],
                         help="a tqdm bar, JSON lines on stdout (for the Slicer module), or nothing")
    segment.add_argument("--server", metavar="URL", help="segment on a DuPLUS server ('duplus serve') instead of here")
    segment.add_argument("--api-key-file", help="with --server: the file holding the server's API key "
                                                "(or set DUPLUS_API_KEY)")
    segment.set_defaults(run=_run_segment)

    merge = sub.add_parser("merge-shards", help="join the summaries of a sharded batch into OUTDIR/summary.csv")
    merge.add_argument("outdir", help="the batch output folder the shards wrote into")
    merge.set_defaults(run=_run_merge_shards)

    if command in ("prompts", "segment", "merge-shards"):
        return parser
    wanted = [PLUGGED_COMMANDS[command]] if command in PLUGGED_COMMANDS else PLUGGED_COMMANDS.values()
    for module_name in dict.fromkeys(wanted):
        module = __import__(module_name, fromlist=["register"])
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    json_errors = getattr(args, "progress", None) == "json"
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # `duplus prompts | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CancelledError as error:
        _report_error(error, json_errors)
        return 130
    except DuPLUSError as error:
        _report_error(error, json_errors)
        return 2
    except MemoryError as error:
        _report_error(MemoryError(f"out of memory: {str(error) or 'the volume is too large'}; crop it or ask for fewer structures"), json_errors)
        return 3


def _report_error(error: BaseException, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "error", "error": type(error).__name__, "message": str(error)}), flush=True)
    print(f"duplus: error: {error}", file=sys.stderr)


# ------------------------------------------------------------------------------------ commands
def _run_prompts(args: argparse.Namespace) -> int:
    from .ontology import load_ontology

    ontology = load_ontology()
    modalities = [ontology.modality_key(args.modality)] if args.modality else list(ontology.hierarchy)
    if args.json:
        print(json.dumps(ontology.listing(modalities), indent=2))
        return 0
    for modality in modalities:
        print(f"{modality} ({ontology.modalities[modality]['name']})")
        for region, structures in ontology.hierarchy[modality].items():
            print(f"  {modality}/{region}/*")
            for key in structures:
                print(f"    {modality}/{region}/{key:<22} {ontology.structures[key].name}")
    return 0


def _run_segment(args: argparse.Namespace) -> int:
    from .batch import is_batch_request

    if not args.input and not args.inputs:
        raise UsageError("give at least one input (a file or folder) or --inputs cases.csv")
    if args.split and args.format not in (None, "nifti"):
        raise UsageError(f"--split writes one NIfTI per structure; it does not apply to --format {args.format}")
    batch = is_batch_request(args.input, args.inputs, args.output, args.shard)
    if batch:
        return _run_batch(args, server=_server_client(args) if args.server else None)
    summary = _run_segment_on_server(args) if args.server else _run_segment_here(args)
    if args.progress == "json":
        print(json.dumps({"event": "done", **{k: summary.get(k) for k in ("output", "report", "preview")},
                          "files": summary.get("files"), "timings_s": summary.get("timings_s"),
                          "segments": summary["segments"]}), flush=True)
    else:
        _print_summary(summary)
    return 0


def _server_client(args: argparse.Namespace):
    """The client of ``--server``, after refusing the options only a local run has."""
    from .remote import client_from_options

    here_only = [flag for flag, used in (("--model", args.model), ("--adapter", args.adapter),
                                         ("--preview", args.preview), ("--probabilities", args.probabilities),
                                         ("--device", args.device != "auto"))
                 if used]
    if here_only:
        raise UsageError(f"{', '.join(here_only)} cannot be used with --server: the server chose its model and device "
                         "when it started (duplus serve --model, --device), and sends back the segmentation and the "
                         "report only")
    return client_from_options(args.server, args.api_key_file)


def _run_segment_on_server(args: argparse.Namespace) -> dict:
    from .remote import segment_file_remote

    client = _server_client(args)
    cancel = _install_stop_handlers()
    progress, close = _progress_reporter(args.progress)
    try:
        return segment_file_remote(client, args.input[0], args.prompts, args.output, report=args.report,
                                   modality=args.modality, overwrite=args.overwrite, progress=progress,
                                   cancel=cancel, series_uid=args.series, format=args.format, split=args.split)
    finally:
        close()


def _run_segment_here(args: argparse.Namespace) -> dict:
    from .inference import segment_file

    cancel = _install_stop_handlers()
    progress, close = _progress_reporter(args.progress)
    try:
        return segment_file(
            args.input[0],
            args.prompts,
            args.output,
            model=args.model,
            adapter=args.adapter,
            device=args.device,
            modality=args.modality,
            report=args.report,
            preview=args.preview,
            probabilities_dir=args.probabilities,
            overwrite=args.overwrite,
            progress=progress,
            cancel=cancel,
            series_uid=args.series,
            format=args.format or ("nifti" if args.split else None),
            split=args.split,
        )
    finally:
        close()


def _run_batch(args: argparse.Namespace, server=None) -> int:
    from .batch import expand_inputs, parse_shard, run_batch

    for flag, value in (("--report", args.report), ("--preview", args.preview),
                        ("--probabilities", args.probabilities), ("--series", args.series)):
        if value:
            raise UsageError(f"{flag} names one case's file; in a batch each case's report is OUTDIR/<case>.json "
                               "and the table is OUTDIR/summary.csv (name series in a CSV's series column)")
    shard = parse_shard(args.shard)
    cases = expand_inputs(args.input, args.inputs, outdir=args.output)
    format = args.format or "seg.nrrd"
    if args.split:
        format = "nifti"
    cancel = _install_stop_handlers()
    progress, on_case, close = _batch_reporter(args.progress, cases, shard)
    try:
        result = run_batch(cases, args.prompts, args.output, model=args.model, adapter=args.adapter,
                           device=args.device, modality=args.modality, format=format, split=args.split,
                           overwrite=args.overwrite, shard=shard, progress=progress, on_case=on_case, cancel=cancel,
                           server=server)
    finally:
        close()
    line = {"summary": str(result.summary.resolve()), "cases": result.cases, "done": result.done,
            "skipped": result.skipped, "failed": result.failed, "redone": result.redone}
    if args.progress == "json":
        print(json.dumps({"event": "done", **line}), flush=True)
    else:
        redone = f" (of which {result.redone} again: the prompts or the model changed)" if result.redone else ""
        print(f"{result.cases} case(s): {result.done} segmented{redone}, {result.skipped} already done, "
              f"{result.failed} failed; summary: {result.summary}")
    return 0 if result.failed == 0 else 4


def _batch_reporter(kind: str, cases, shard):
    from .batch import select_shard

    count = len(select_shard(cases, shard))
    if kind == "json":
        def progress(case, position, total, stage, fraction, message) -> None:
            print(json.dumps({"event": "progress", "case": case.case_id, "case_index": case.index,
                              "case_position": position, "cases": total, "stage": stage,
                              "fraction": round(fraction, 4), "message": message}), flush=True)

        def on_case(case, status, info) -> None:
            event = {"event": "case", "case": case.case_id, "case_index": case.index, "status": status}
            if status == "failed":
                event |= info
            else:
                event["files"] = info.get("files")
            print(json.dumps(event), flush=True)

        return progress, on_case, lambda: None
    if kind == "none":
        return (lambda *a: None), (lambda *a: None), lambda: None
    from tqdm import tqdm

    bar = tqdm(total=count, unit="case", file=sys.stderr, dynamic_ncols=True)

    def progress(case, position, total, stage, fraction, message) -> None:
        bar.set_description_str(f"{case.case_id}: {stage}"[:40])

    from .postprocessing import dropped_parts_warning

    def on_case(case, status, info) -> None:
        bar.update(1)
        if status == "failed":
            bar.write(f"{case.case_id}: failed: {info['message']}", file=sys.stderr)
        for warning in filter(None, map(dropped_parts_warning, info.get("segments", []) if status == "done" else [])):
            bar.write(f"{case.case_id}: check: {warning}", file=sys.stderr)

    return progress, on_case, bar.close


def _run_merge_shards(args: argparse.Namespace) -> int:
    from .batch import merge_summaries

    print(f"merged: {merge_summaries(args.outdir)}")
    return 0


def _print_summary(summary: dict) -> None:
    from .postprocessing import dropped_parts_warning

    print(f"{'structure':<28}{'volume ml':>12}{'confidence':>12}")
    for entry in summary["segments"]:
        confidence = "-" if entry["confidence"] is None else f"{entry['confidence']:.3f}"
        print(f"{entry['name']:<28}{entry['volume_ml']:>12.1f}{confidence:>12}")
    for warning in filter(None, map(dropped_parts_warning, summary["segments"])):
        print(f"check:   {warning}")
    for label in ("output", "report", "preview"):
        if summary.get(label):
            print(f"{label + ':':<9} {summary[label]}")


def _install_stop_handlers() -> Callable[[], bool]:
    """SIGINT and SIGTERM set a flag the inference loop polls between windows, so it stops promptly
    and cleanly; a second signal exits at once."""
    stop = threading.Event()

    def handle(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(signum, handle)
        except ValueError:  # not the main thread (embedded use): polling still works via cancel()
            pass
    return stop.is_set


def _progress_reporter(kind: str):
    if kind == "json":
        def report(stage: str, fraction: float, message: str) -> None:
            print(json.dumps({"event": "progress", "stage": stage, "fraction": round(fraction, 4),
                              "message": message}), flush=True)
        return report, lambda: None
    if kind == "none":
        return (lambda stage, fraction, message: None), lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", bar_format="{desc:<40}{percentage:3.0f}%|{bar}| {elapsed}", file=sys.stderr)
    from .progress import overall_percent

    def report(stage: str, fraction: float, message: str) -> None:
        bar.set_description_str(f"{stage}: {message}"[:40])
        bar.n = overall_percent(stage, fraction)
        bar.refresh()

    return report, bar.close


if __name__ == "__main__":
    sys.exit(main())
