"""Repeated k-fold CV of chosen prognosis models on identical splits; writes JSON, prints a table.

Like ``duplus prognosis evaluate`` but with the models named on the command line, so a measurement
can be limited to what changed (CPU time is scarce on shared machines). Example, the figures of
PROGNOSIS_CARD.md:

    duplus prognosis cohort larynx -o larynx.csv
    python benchmarks/prognosis_cv.py --cohort larynx.csv --time time_years --event death \\
        --models duplus,duplus_without_numeric,duplus_without_text,coxph --repeats 20 --json larynx_cv.json

Model names: ``duplus`` (the default configuration over --features), ``duplus_without_<block>``,
``coxph`` (lifelines on the numeric EHR), ``coxph_with_image`` (plus tumour measurements).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--time", required=True)
    parser.add_argument("--event", required=True)
    parser.add_argument("--image-col")
    parser.add_argument("--seg-col")
    parser.add_argument("--features", help="blocks of the duplus model (default numeric,text[,image])")
    parser.add_argument("--models", default="duplus,coxph")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from DuPLUSLib.prognosis.cohort import load_cohort
    from DuPLUSLib.prognosis.evaluation import cross_validate
    from DuPLUSLib.prognosis.model import PrognosisConfig
    from DuPLUSLib.prognosis.pipeline import cohort_inputs, model_factories
    from DuPLUSLib.text import TextEncoder

    cohort = load_cohort(args.cohort, args.time, args.event, image_column=args.image_col,
                         segmentation_column=args.seg_col)
    use = tuple(args.features.split(",")) if args.features else ("numeric", "text") + (("image",) if args.image_col else ())
    config = PrognosisConfig(use=use, n_bootstrap=0)
    inputs = cohort_inputs(cohort, TextEncoder() if "text" in use else None, None, None, args.image_col, args.seg_col)
    available = model_factories(config, inputs, ablations=True)
    wanted = args.models.split(",")
    unknown = [m for m in wanted if m not in available]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(available)}")
    start = time.perf_counter()
    result = cross_validate(inputs, cohort.time, cohort.event, {m: available[m] for m in wanted}, args.folds,
                            args.repeats, args.seed,
                            progress=lambda i, n: print(f"fold {i}/{n}", file=sys.stderr, end="\r"))
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    summary = result.summary()
    print(f"{args.cohort}: {len(cohort)} patients, {int(cohort.event.sum())} events; "
          f"{args.repeats} x {args.folds}-fold CV, identical splits (seed {args.seed}); {seconds:.0f} s")
    print(f"  {'model':<26}{'C-index':>9}{'SD folds':>10}{'SD repeats':>12}{'IBS':>8}")
    for name, row in summary.items():
        print(f"  {name:<26}{row['c_index_mean']:>9.3f}{row['c_index_sd_folds']:>10.3f}"
              f"{row['c_index_sd_repeats']:>12.3f}{row['ibs_mean']:>8.3f}")
    if "coxph" in result.c_index:
        reference = np.asarray(result.c_index["coxph"]).reshape(args.repeats, args.folds).mean(1)
        for name, values in result.c_index.items():
            if name != "coxph":
                diff = np.asarray(values).reshape(args.repeats, args.folds).mean(1) - reference
                print(f"  {name} - coxph, paired over repeats: {diff.mean():+.3f} +- {diff.std():.3f} "
                      f"(better in {int((diff > 0).sum())} of {args.repeats})")
    if args.json:
        payload = {**result.to_dict(), "cohort": args.cohort, "config": config.to_dict(), "seconds": round(seconds, 1),
                   "command": "python benchmarks/prognosis_cv.py " + " ".join(sys.argv[1:])}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
