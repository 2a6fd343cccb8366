"""``duplus prognosis``: cohort, train, evaluate, predict. Parses arguments and calls :mod:`pipeline`.

    duplus prognosis cohort larynx -o larynx.csv
    duplus prognosis train --cohort larynx.csv --time time_years --event death -o model/
    duplus prognosis evaluate --cohort larynx.csv --time time_years --event death --json cv.json
    duplus prognosis predict --ehr patient.json --plot km.png --report out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers) -> None:
    """Add ``prognosis`` and its subcommands to the ``duplus`` parser."""
    prognosis = subparsers.add_parser("prognosis", help="EHR (+ image) survival model: train, evaluate, predict")
    sub = prognosis.add_subparsers(dest="prognosis_command", required=True, metavar="SUBCOMMAND")

    cohort = sub.add_parser("cohort", help="write an example cohort CSV (larynx: real; synthetic: phantom CTs)")
    cohort.add_argument("name", choices=["larynx", "synthetic"])
    cohort.add_argument("-o", "--output", required=True, help="cohort CSV to write")
    cohort.add_argument("--patients", type=int, default=160, help="synthetic cohort size")
    cohort.add_argument("--seed", type=int, default=0)
    cohort.add_argument("--overwrite", action="store_true")
    cohort.set_defaults(run=run)

    for name, helptext in (("train", "train a prognosis model on a cohort CSV"),
                           ("evaluate", "repeated k-fold CV of the model, its ablations and lifelines CoxPH")):
        command = sub.add_parser(name, help=helptext)
        _cohort_arguments(command)
        if name == "train":
            command.add_argument("-o", "--output", required=True, help="model folder to write")
            command.add_argument("--groups", type=int, default=3, choices=[2, 3, 4],
                                 help="risk groups from training-risk quantiles (2: median, 3: tertiles)")
            command.add_argument("--bootstrap", type=int, default=20, help="bootstrap refits for survival intervals")
            command.add_argument("--overwrite", action="store_true")
            command.add_argument("--cv-repeats", type=int, default=5, help="CV repeats reported at training; 0: none")
        else:
            command.add_argument("--cv-repeats", type=int, default=20)
            command.add_argument("--json", help="write all per-fold scores to this JSON")
        command.add_argument("--cv-folds", type=int, default=5)
        command.add_argument("--cv-seed", type=int, default=0)
        command.set_defaults(run=run)

    predict = sub.add_parser("predict", help="risk, risk group, S(2y), S(5y) and a Kaplan-Meier plot for one patient")
    predict.add_argument("--model", help="prognosis model folder (default: the bundled larynx EHR model)")
    predict.add_argument("--ehr", required=True, help="patient JSON, e.g. {\"age\": 63, \"stage\": \"III\"}")
    predict.add_argument("--image", help="CT of the patient (if the model uses image features)")
    predict.add_argument("--segmentation", help="tumour .seg.nrrd with GTVp and/or GTVn")
    predict.add_argument("--plot", help="PNG to write the Kaplan-Meier plot to")
    predict.add_argument("--report", help="JSON report to write")
    predict.add_argument("--overwrite", action="store_true")
    predict.add_argument("--progress", default="text", choices=["text", "json"],
                         help="json: one JSON object per line on stdout (for the Slicer module)")
    predict.set_defaults(run=run)


def _cohort_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--cohort", required=True, help="cohort CSV, one row per patient")
    command.add_argument("--time", required=True, help="column with follow-up time")
    command.add_argument("--event", required=True, help="column with the event (1 = died, 0 = censored)")
    command.add_argument("--time-unit", default="years", choices=["years", "months", "weeks", "days"])
    command.add_argument("--column-map", help="JSON: {\"columns\": {field: column}, \"constants\": {field: value}}")
    command.add_argument("--image-col", help="column with each patient's CT path (relative to the CSV)")
    command.add_argument("--seg-col", help="column with each patient's tumour .seg.nrrd path")
    command.add_argument("--features", default=None,
                         help="comma-separated blocks: numeric,text,image,deep (default numeric,text[,image])")
    command.add_argument("--segmentation-model", help="segmentation model folder for 'deep' features (default: bundled)")
    command.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    return {"cohort": _run_cohort, "train": _run_train, "evaluate": _run_evaluate,
            "predict": _run_predict}[args.prognosis_command](args)


# --------------------------------------------------------------------------------------- cohort
def _run_cohort(args: argparse.Namespace) -> int:
    from ..imageio import atomic_output

    if args.name == "larynx":
        from .cohort import larynx_frame

        with atomic_output(args.output, args.overwrite) as temporary:
            larynx_frame().to_csv(temporary, index=False)
        print(f"wrote {args.output}: 90 patients (lifelines larynx); train with --time time_years --event death")
        return 0
    from .synthetic import write_synthetic_cohort

    path = write_synthetic_cohort(args.output, args.patients, args.seed, overwrite=args.overwrite,
                                  progress=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}: {args.patients} synthetic head-and-neck patients; train with --time time_years "
          "--event death --image-col image --seg-col segmentation")
    return 0


# ------------------------------------------------------------------------------- train, evaluate
def _prepare(args: argparse.Namespace):
    from .cohort import ColumnMap, load_cohort
    from .model import PrognosisConfig
    from .pipeline import cohort_inputs

    column_map = ColumnMap.load(args.column_map) if args.column_map else None
    cohort = load_cohort(args.cohort, args.time, args.event, column_map, args.image_col, args.seg_col)
    default = ["numeric", "text"] + (["image"] if args.image_col else [])
    use = [b.strip() for b in args.features.split(",")] if args.features else default
    if {"image", "deep"} & set(use) and not args.image_col:
        from .cohort import CohortError

        raise CohortError("image features need --image-col and --seg-col")
    config = PrognosisConfig(use=tuple(use), seed=args.seed, n_bootstrap=getattr(args, "bootstrap", 0))
    encoder = None
    if "text" in use:
        from ..text import TextEncoder

        encoder = TextEncoder()
    deep_model = None
    if "deep" in use:
        from ..bundle import load_bundle

        deep_model = load_bundle(args.segmentation_model)
    inputs = cohort_inputs(cohort, encoder, deep_model, lambda m: print(m, file=sys.stderr, end="\r"),
                           args.image_col, args.seg_col)
    return cohort, inputs, config, deep_model


def _print_cv(result, title: str) -> None:
    print(f"{title}: {result.repeats} x {result.folds}-fold CV, same splits for every model (seed {result.seed})")
    print(f"  {'model':<28}{'C-index':>9}{'SD folds':>10}{'SD repeats':>12}{'IBS':>8}")
    for name, row in result.summary().items():
        print(f"  {name:<28}{row['c_index_mean']:>9.3f}{row['c_index_sd_folds']:>10.3f}"
              f"{row['c_index_sd_repeats']:>12.3f}{row['ibs_mean']:>8.3f}")


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..imageio import atomic_output, check_output_path
    from .pipeline import evaluate_cohort

    if args.json:
        check_output_path(args.json, True)
    cohort, inputs, config, _ = _prepare(args)
    start = time.perf_counter()
    result = evaluate_cohort(inputs, cohort, config, args.cv_folds, args.cv_repeats, args.cv_seed,
                             progress=lambda i, n: print(f"fold {i}/{n}", file=sys.stderr, end="\r"))
    print(file=sys.stderr)
    _print_cv(result, f"{cohort.source} ({len(cohort)} patients, {int(cohort.event.sum())} events)")
    if args.json:
        payload = {**result.to_dict(), "cohort": cohort.source, "patients": len(cohort),
                   "events": int(cohort.event.sum()), "config": config.to_dict(),
                   "seconds": round(time.perf_counter() - start, 1), "command": " ".join(sys.argv)}
        with atomic_output(args.json) as temporary:
            temporary.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from ..errors import OutputPathError
    from .pipeline import evaluate_cohort, train_bundle

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise OutputPathError(f"model folder '{output}' exists and is not empty; pass --overwrite to replace it")
    cohort, inputs, config, deep_model = _prepare(args)
    info = {"arguments": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
            "features": list(config.use)}
    if args.cv_repeats > 0:
        result = evaluate_cohort(inputs, cohort, config, args.cv_folds, args.cv_repeats, args.cv_seed, ablations=False)
        print(file=sys.stderr)
        _print_cv(result, "cross-validation")
        info["cross_validation"] = {"folds": args.cv_folds, "repeats": args.cv_repeats, "seed": args.cv_seed,
                                    "summary": result.summary()}
    deep_info = None
    if deep_model is not None:
        deep_info = {"path": args.segmentation_model, "name": deep_model.config.name}
    bundle = train_bundle(inputs, cohort, config, args.groups, args.time_unit, deep_model_info=deep_info,
                          training_info=info)
    bundle.save(output, overwrite=args.overwrite)
    groups = ", ".join(f"{c.label} {c.patients}" for c in bundle.reference.curves)
    print(f"trained on {len(cohort)} patients ({int(cohort.event.sum())} events), {bundle.model.epochs} epochs; "
          f"risk groups: {groups}; wrote {output}")
    return 0


# -------------------------------------------------------------------------------------- predict
def _run_predict(args: argparse.Namespace) -> int:
    from .bundle import load_prognosis_bundle
    from .pipeline import predict_patient, read_patient_ehr, write_readout

    record = read_patient_ehr(args.ehr)
    bundle = load_prognosis_bundle(args.model)
    for target in (args.plot, args.report):
        if target:
            from ..imageio import check_output_path

            check_output_path(target, args.overwrite)
    readout = predict_patient(bundle, record, args.image, args.segmentation)
    write_readout(readout, bundle, args.report, args.plot, args.overwrite)
    if args.progress == "json":
        print(json.dumps({"event": "done", "report": args.report, "plot": args.plot,
                          "readout": readout.to_dict()}), flush=True)
    else:
        print(readout.summary_text())
        for label, target in (("report", args.report), ("plot", args.plot)):
            if target:
                print(f"{label}: {target}")
    return 0
