"""``duplus prognosis``: cohort, train, evaluate, predict. Parses arguments and calls :mod:`pipeline`.

    duplus prognosis cohort larynx -o larynx.csv
    duplus prognosis train --cohort larynx.csv --time time_years --event death -o model/
    duplus prognosis train --cohort lung.csv --time days --event status --time-unit days --exclude inst -o model/
    duplus prognosis evaluate --cohort larynx.csv --time time_years --event death --json cv.json

Every column but the time, the event and the id is a covariate (``--columns`` / ``--exclude`` choose);
training prints how each column is read. ``evaluate`` and ``train`` run nested cross-validation among
penalised CoxPH, the DuPLUS head and their ensemble, with lifelines CoxPH on the same columns beside
them; ``train`` keeps the candidate with the best measured outer C-index.
    duplus prognosis predict --ehr patient.json --plot km.png --report out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["register", "run"]

# Real cohorts shipped with lifelines, for trying the tool on data with columns beyond the schema:
# name -> (loader, time column, event column, time unit, what it is)
LIFELINES_COHORTS = {
    "lung": ("load_lung", "time", "status", "days", "NCCTG advanced lung cancer, 228 patients"),
    "rossi": ("load_rossi", "week", "arrest", "weeks", "Rossi recidivism after release, 432 people"),
    "kidney_transplant": ("load_kidney_transplant", "time", "death", "days", "kidney transplant, 863 patients"),
}


def register(subparsers) -> None:
    """Add ``prognosis`` and its subcommands to the ``duplus`` parser."""
    prognosis = subparsers.add_parser("prognosis", help="EHR (+ image) survival model: train, evaluate, predict")
    sub = prognosis.add_subparsers(dest="prognosis_command", required=True, metavar="SUBCOMMAND")

    cohort = sub.add_parser("cohort", help="write an example cohort CSV (larynx, lung, rossi, kidney_transplant: "
                                           "real, from lifelines; synthetic: phantom CTs)")
    cohort.add_argument("name", choices=["larynx", *LIFELINES_COHORTS, "synthetic"])
    cohort.add_argument("-o", "--output", required=True, help="cohort CSV to write")
    cohort.add_argument("--patients", type=int, default=160, help="synthetic cohort size")
    cohort.add_argument("--seed", type=int, default=0)
    cohort.add_argument("--overwrite", action="store_true")
    cohort.set_defaults(run=run)

    for name, helptext in (("train", "train a prognosis model on a cohort CSV (model chosen by nested CV)"),
                           ("evaluate", "nested CV of penalised CoxPH, the DuPLUS head, their ensemble and lifelines CoxPH")):
        command = sub.add_parser(name, help=helptext)
        _cohort_arguments(command)
        if name == "train":
            command.add_argument("-o", "--output", required=True, help="model folder to write")
            command.add_argument("--groups", type=int, default=3, choices=[2, 3, 4],
                                 help="risk groups from training-risk quantiles (2: median, 3: tertiles)")
            command.add_argument("--bootstrap", type=int, default=20, help="bootstrap refits for survival intervals")
            command.add_argument("--overwrite", action="store_true")
            command.add_argument("--cv-repeats", type=int, default=2,
                                 help="repeats of the nested CV that chooses the model (>= 1 with --model-kind auto)")
            command.add_argument("--model-kind", default="auto", choices=["auto", "coxph", "duplus", "ensemble"],
                                 help="auto: chosen by nested CV; or fix the kind (then --cv-repeats 0 skips CV)")
            command.add_argument("--horizons", help="comma-separated survival read-out times in --time-unit "
                                                    "(default: 2 and 5 years in that unit)")
        else:
            command.add_argument("--cv-repeats", type=int, default=5)
            command.add_argument("--json", help="write all per-fold scores to this JSON")
        command.add_argument("--inner-folds", type=int, default=3, help="folds of the inner CV that selects the model")
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
    predict.add_argument("--server", metavar="URL",
                         help="predict on a DuPLUS server ('duplus serve', its --prognosis-model) instead of here")
    predict.add_argument("--api-key-file", help="with --server: the file holding the server's API key "
                                                "(or set DUPLUS_API_KEY)")
    predict.set_defaults(run=run)


def _cohort_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--cohort", required=True, help="cohort CSV, one row per patient")
    command.add_argument("--time", required=True, help="column with follow-up time")
    command.add_argument("--event", required=True, help="column with the event (1 = died, 0 = censored)")
    command.add_argument("--time-unit", default="years", choices=["years", "months", "weeks", "days"])
    command.add_argument("--column-map", help="JSON: {\"columns\": {field: column}, \"constants\": {field: value}}")
    command.add_argument("--columns", help="comma-separated covariate columns to use (default: every column but "
                                           "the time, the event and the id)")
    command.add_argument("--exclude", help="comma-separated columns to leave out")
    command.add_argument("--image-col", help="column with each patient's CT path (relative to the CSV)")
    command.add_argument("--seg-col", help="column with each patient's tumour .seg.nrrd path")
    command.add_argument("--features", default=None,
                         help="comma-separated blocks: numeric,extra,text,image,deep (default: numeric, extra "
                              "if the cohort has extra columns, text, image with --image-col)")
    command.add_argument("--segmentation-model", help="segmentation model folder for 'deep' features (default: bundled)")
    command.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.prognosis_command == "predict" and args.server:
        return _run_predict_on_server(args)  # the server does the work: no PyTorch needed here
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
    if args.name in LIFELINES_COHORTS:
        import lifelines.datasets

        loader, time_column, event_column, unit, what = LIFELINES_COHORTS[args.name]
        with atomic_output(args.output, args.overwrite) as temporary:
            getattr(lifelines.datasets, loader)().to_csv(temporary, index=False)
        print(f"wrote {args.output}: {what} (lifelines); train with --time {time_column} --event {event_column} "
              f"--time-unit {unit}")
        return 0
    from .synthetic import write_synthetic_cohort

    path = write_synthetic_cohort(args.output, args.patients, args.seed, overwrite=args.overwrite,
                                  progress=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}: {args.patients} synthetic head-and-neck patients; train with --time time_years "
          "--event death --image-col image --seg-col segmentation --exclude true_log_hazard,phantom_seed "
          "(the simulated answer and the phantom's seed are not covariates)")
    return 0


# ------------------------------------------------------------------------------- train, evaluate
def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _prepare(args: argparse.Namespace):
    from .cohort import ColumnMap, CohortError, load_cohort
    from .covariates import column_table
    from .model import PrognosisConfig
    from .pipeline import cohort_inputs, default_blocks

    column_map = ColumnMap.load(args.column_map) if args.column_map else None
    cohort = load_cohort(args.cohort, args.time, args.event, column_map, args.image_col, args.seg_col,
                         columns=_names(args.columns), exclude=_names(args.exclude) or ())
    print(f"{cohort.source}: {len(cohort)} patients, {int(cohort.event.sum())} events; time in {args.time_unit}")
    print(column_table(cohort.columns, cohort.roles))
    for note in cohort.notes:
        print(f"note: {note}")
    _check_folds(args, cohort)
    use = _names(args.features)
    if use is not None:
        from .features import BLOCK_ORDER

        unknown = [b for b in use if b not in BLOCK_ORDER]
        if unknown or not use:
            raise CohortError(f"--features '{args.features}' names {'no block' if not use else ', '.join(unknown)}; "
                              f"choose from {', '.join(BLOCK_ORDER)}")
    if use and {"image", "deep"} & set(use) and not args.image_col:
        raise CohortError("image features need --image-col and --seg-col")
    encoder = None
    if use is None or "text" in use:
        from ..text import TextEncoder

        encoder = TextEncoder()
    deep_model = None
    if use and "deep" in use:
        from ..bundle import load_bundle

        deep_model = load_bundle(args.segmentation_model)
    inputs = cohort_inputs(cohort, encoder, deep_model, lambda m: print(m, file=sys.stderr, end="\r"),
                           args.image_col, args.seg_col)
    if use is None:
        use = list(default_blocks(inputs))
    if "extra" in use and inputs.extra is None:
        raise CohortError("--features names 'extra' but the cohort has no covariate beyond the EHR schema")
    config = PrognosisConfig(use=tuple(use), seed=args.seed, n_bootstrap=getattr(args, "bootstrap", 0))
    return cohort, inputs, config, deep_model


def _check_folds(args: argparse.Namespace, cohort) -> None:
    """Fold counts the cohort can fill, refused before any model is fitted (not a traceback later)."""
    from .cohort import CohortError

    if args.cv_repeats < 1:
        return
    for option, folds in (("--cv-folds", args.cv_folds), ("--inner-folds", args.inner_folds)):
        if folds < 2:
            raise CohortError(f"{option} {folds}: cross-validation needs at least 2 folds")
    events = int(cohort.event.sum())
    if events < args.cv_folds:
        raise CohortError(f"the cohort has {events} event(s), fewer than the {args.cv_folds} outer folds, so some test "
                          f"folds would hold none and could not be scored; give --cv-folds {max(events, 2)} or fewer")


def _print_selection(result, title: str) -> None:
    print(f"{title}: {result.repeats} x {result.folds}-fold outer CV; in each outer training fold a "
          f"{result.inner_folds}-fold inner CV chooses the model; same splits for every model (seed {result.seed})")
    print(f"  {'model':<24}{'C-index':>9}{'SD folds':>10}{'SD repeats':>12}{'IBS':>8}  chosen in")
    counts = result.to_dict()["chosen_per_fold_counts"]
    labels = {"coxph": "penalised CoxPH", "duplus": "DuPLUS head", "ensemble": "ensemble",
              "lifelines_coxph": "lifelines CoxPH", "selected (nested)": "selected (nested)"}
    for name, row in result.summary().items():
        chosen = f"{counts[name]}/{len(result.chosen_per_fold)} folds" if name in counts else ""
        print(f"  {labels.get(name, name):<24}{row['c_index_mean']:>9.3f}{row['c_index_sd_folds']:>10.3f}"
              f"{row['c_index_sd_repeats']:>12.3f}{row['ibs_mean']:>8.3f}  {chosen}")
    print(f"  chosen for the final model: {labels[result.chosen]} (best mean outer C-index)")
    if result.unscored_test_folds:
        print(f"note: {result.unscored_test_folds} of {len(result.chosen_per_fold)} outer test folds held no pair of "
              "patients to compare (too few events); they are left out of every C-index mean. Fewer --cv-folds "
              "make larger test folds")


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..imageio import atomic_output, check_output_path
    from .pipeline import select_model

    if args.json:
        check_output_path(args.json, True)
    cohort, inputs, config, _ = _prepare(args)
    start = time.perf_counter()
    result = select_model(inputs, cohort, config, args.cv_folds, args.cv_repeats, args.inner_folds, args.cv_seed,
                          progress=lambda i, n: print(f"outer fold {i}/{n}", file=sys.stderr, end="\r"))
    print(file=sys.stderr)
    _print_selection(result, f"{cohort.source} ({len(cohort)} patients, {int(cohort.event.sum())} events, "
                              f"blocks {'+'.join(config.use)})")
    if args.json:
        payload = {**result.to_dict(), "cohort": cohort.source, "patients": len(cohort),
                   "events": int(cohort.event.sum()), "config": config.to_dict(),
                   "columns": [c.to_dict() for c in cohort.columns],
                   "seconds": round(time.perf_counter() - start, 1), "command": " ".join(sys.argv)}
        with atomic_output(args.json) as temporary:
            temporary.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from ..errors import OutputPathError
    from .cohort import CohortError
    from .bundle import check_model_folder
    from .model import PrognosisConfig
    from .pipeline import select_model, train_bundle

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise OutputPathError(f"model folder '{output}' exists and is not empty; pass --overwrite to replace it")
    check_model_folder(output)
    if args.model_kind == "auto" and args.cv_repeats < 1:
        raise CohortError("--model-kind auto chooses the model by nested cross-validation: give --cv-repeats 1 "
                          "or more, or fix the kind with --model-kind coxph|duplus|ensemble")
    horizons = None
    if args.horizons:
        try:
            horizons = [float(h) for h in _names(args.horizons)]
        except ValueError:
            raise CohortError(f"--horizons '{args.horizons}' must be comma-separated numbers in {args.time_unit}") from None
        if not horizons or any(h <= 0 for h in horizons):
            raise CohortError(f"--horizons '{args.horizons}' must be positive times in {args.time_unit}")
    cohort, inputs, config, deep_model = _prepare(args)
    info = {"arguments": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
            "features": list(config.use)}
    selection = None
    if args.model_kind != "auto":
        from .selection import candidate_configs

        kind = {"duplus": "head"}.get(args.model_kind, args.model_kind)
        fixed = candidate_configs(config).get(args.model_kind)
        if fixed is None:
            raise CohortError(f"--model-kind {args.model_kind} is not possible with the blocks {', '.join(config.use)}")
        config = PrognosisConfig.from_dict({**fixed.to_dict(), "kind": kind, "n_bootstrap": config.n_bootstrap})
    if args.cv_repeats > 0:
        selection = select_model(inputs, cohort, config, args.cv_folds, args.cv_repeats, args.inner_folds,
                                 args.cv_seed, progress=lambda i, n: print(f"outer fold {i}/{n}", file=sys.stderr, end="\r"))
        print(file=sys.stderr)
        _print_selection(selection, "model selection")
        if args.model_kind != "auto":
            print(f"  --model-kind {args.model_kind}: the final model is {args.model_kind}, not the selection's choice")
            selection = None
    deep_info = None
    if deep_model is not None:
        deep_info = {"path": args.segmentation_model, "name": deep_model.config.name}
    bundle = train_bundle(inputs, cohort, config, args.groups, args.time_unit, deep_model_info=deep_info,
                          training_info=info, selection=selection, horizons=horizons)
    bundle.save(output, overwrite=args.overwrite)
    groups = ", ".join(f"{c.label} {c.patients}" for c in bundle.reference.curves)
    print(f"trained {bundle.model.config.kind} on {len(cohort)} patients ({int(cohort.event.sum())} events) with "
          f"{len(bundle.extra_columns)} extra column(s); risk groups: {groups}; wrote {output}")
    return 0


# -------------------------------------------------------------------------------------- predict
def _run_predict(args: argparse.Namespace) -> int:
    from .bundle import load_prognosis_bundle
    from .ehr import read_patient_values
    from .pipeline import predict_patient, write_readout

    values = read_patient_values(args.ehr)
    bundle = load_prognosis_bundle(args.model)
    record, covariates = bundle.parse_patient(values)
    for target in (args.plot, args.report):
        if target:
            from ..imageio import check_output_path

            check_output_path(target, args.overwrite)
    readout = predict_patient(bundle, record, args.image, args.segmentation, covariates=covariates)
    write_readout(readout, bundle, args.report, args.plot, args.overwrite)
    _print_readout(args, readout)
    return 0


def _print_readout(args: argparse.Namespace, readout) -> None:
    if args.progress == "json":
        print(json.dumps({"event": "done", "report": args.report, "plot": args.plot,
                          "readout": readout.to_dict()}), flush=True)
    else:
        print(readout.summary_text())
        for label, target in (("report", args.report), ("plot", args.plot)):
            if target:
                print(f"{label}: {target}")


def _run_predict_on_server(args: argparse.Namespace) -> int:
    """``predict --server``: the same readout, report and plot, computed by the server's model."""
    import base64

    from ..cli import UsageError
    from ..imageio import atomic_output, check_output_path
    from ..remote import client_from_options
    from .ehr import read_patient_values
    from .readout import PatientReadout

    here_only = [flag for flag, value in (("--model", args.model), ("--image", args.image),
                                          ("--segmentation", args.segmentation)) if value]
    if here_only:
        raise UsageError(f"{', '.join(here_only)} cannot be used with --server: the server chose its prognosis model "
                         "when it started (duplus serve --prognosis-model), and takes EHR-only models; run without "
                         "--server for image features")
    values = read_patient_values(args.ehr)
    for target in (args.plot, args.report):
        if target:
            check_output_path(target, args.overwrite)
    answer = client_from_options(args.server, args.api_key_file).predict_prognosis(values, plot=bool(args.plot))
    readout = PatientReadout(**answer["readout"])
    if args.plot:
        with atomic_output(args.plot, args.overwrite) as temporary:
            temporary.write_bytes(base64.b64decode(answer["plot_png"]))
    if args.report:
        report = {key: value for key, value in answer.items() if key != "plot_png"} | {"server": args.server}
        with atomic_output(args.report, args.overwrite) as temporary:
            temporary.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _print_readout(args, readout)
    return 0

