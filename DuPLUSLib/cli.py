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
from pathlib import Path
from typing import Callable, Sequence

from .errors import CancelledError, DuPLUSError

__all__ = ["main", "build_parser"]

# Subcommands that live with their own package; each module offers register(subparsers).
# Only the module of the command being run is imported, so `duplus prompts` never loads torch.
PLUGGED_COMMANDS = {
    "phantom": "DuPLUSLib.phantoms.cli",
    "train": "DuPLUSLib.training.cli",
    "finetune": "DuPLUSLib.training.finetune",
    "evaluate": "DuPLUSLib.training.evaluate",
    "prognosis": "DuPLUSLib.prognosis.cli",
    "data": "DuPLUSLib.datasets.cli",
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

    segment = sub.add_parser("segment", help="segment an image file with text prompts")
    segment.add_argument("input", help="NRRD, NIfTI, MHA file or a DICOM series folder")
    segment.add_argument("-p", "--prompt", action="append", required=True, dest="prompts",
                         help="MODALITY/REGION/STRUCTURE, e.g. CT/abdomen/liver; '*' for every "
                              "structure of a region; repeat for several")
    segment.add_argument("--series", metavar="UID", help="SeriesInstanceUID, when the DICOM folder holds several")
    segment.add_argument("-o", "--output", required=True, help="output .seg.nrrd")
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
    segment.set_defaults(run=_run_segment)

    if command in ("prompts", "segment"):
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
        listing = {
            "version": ontology.version,
            "hierarchy": {m: ontology.hierarchy[m] for m in modalities},
            "structures": {
                key: {"name": s.name, "synonyms": list(s.synonyms), "color": list(s.color),
                      "terminology": s.terminology.as_slicer_tag()}
                for key, s in ontology.structures.items()
            },
        }
        print(json.dumps(listing, indent=2))
        return 0
    for modality in modalities:
        print(f"{modality} ({ontology.modalities[modality]['name']})")
        for region, structures in ontology.hierarchy[modality].items():
            print(f"  {modality}/{region}/*")
            for key in structures:
                print(f"    {modality}/{region}/{key:<22} {ontology.structures[key].name}")
    return 0


def _run_segment(args: argparse.Namespace) -> int:
    from .inference import segment_file

    cancel = _install_stop_handlers()
    progress, close = _progress_reporter(args.progress)
    try:
        summary = segment_file(
            args.input,
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
        )
    finally:
        close()
    if args.progress == "json":
        print(json.dumps({"event": "done", **{k: summary.get(k) for k in ("output", "report", "preview")},
                          "segments": summary["segments"]}), flush=True)
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    print(f"{'structure':<28}{'volume ml':>12}{'confidence':>12}")
    for entry in summary["segments"]:
        confidence = "-" if entry["confidence"] is None else f"{entry['confidence']:.3f}"
        print(f"{entry['name']:<28}{entry['volume_ml']:>12.1f}{confidence:>12}")
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
