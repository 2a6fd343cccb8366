#!/usr/bin/env python
"""Issue 11's ablation: what do label-driven synthesis and the real CT images each buy, on one budget?

Four arms, all from ``configs/default-v4.yaml`` (version 4's recipe) with the same warm start, seed,
steps and network; only the datasets differ (a 2 x 2 design):

* ``full``: the default recipe;
* ``no_synthesis``: without any ``kind: synth`` entry (real images, phantoms and MNI152 as they are);
* ``no_real_images``: without the real CT images (``kind: decathlon``); the synthesis from their
  label maps stays;
* ``neither``: phantoms and MNI152 only.

Each arm is a ``duplus train`` run (resumable: rerun the script to continue), evaluated on the
validation cases (``experiments/synthetic_holdout.py``: new deformations and contrasts of the
training CT's anatomy, seeds >= 90,000) and the no-regression cases (the bundled phantom sample,
MNI152 seed 100). The reserved real scans are not used here. Writes ``OUT/data_ablation.json``
and ``OUT/data_ablation.md`` (paired differences to ``full`` with 95 % bootstrap intervals over cases).

    python experiments/synthetic_holdout.py --data data/ts-example-ct -o runs/synthetic_holdout
    python experiments/data_ablation.py -o runs/data_ablation --steps 400 --initial-model runs/preview3/model
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from ablation import paired_difference, write_results  # noqa: E402  (shared with the prompt ablation)

from DuPLUSLib.bundle import load_bundle  # noqa: E402
from DuPLUSLib.training.config import TrainingConfig  # noqa: E402
from DuPLUSLib.training.evaluate import evaluate_model, parse_data_spec, write_report  # noqa: E402
from DuPLUSLib.training.loop import train  # noqa: E402

ARMS = {
    "full": lambda d: True,
    "no_synthesis": lambda d: d["kind"] != "synth",
    "no_real_images": lambda d: d["kind"] != "decathlon",
    "neither": lambda d: d["kind"] not in ("synth", "decathlon"),
}
VALIDATION = ["ct_abdomen", "ct_pelvis", "mri_abdomen", "mri_pelvis"]
NO_REGRESSION = {"phantom_sample": "phantom:CT/abdomen:seeds=20251003-20251003", "mni152": "mni152:seeds=100-100"}


def arm_config(document: dict, name: str, steps: int, initial_model: str | None) -> TrainingConfig:
    values = copy.deepcopy(document)
    values["name"] = f"{document['name']}-{name}"
    if initial_model:
        values["initial_model"] = initial_model
    values["datasets"] = [d for d in document["datasets"] if ARMS[name](d)]
    values["training"]["steps"] = steps
    values["training"]["warmup_steps"] = min(values["training"].get("warmup_steps", 50), max(1, steps // 10))
    return TrainingConfig.from_dict(values)


def run_arm(name: str, document: dict, args: argparse.Namespace) -> dict:
    run_dir = Path(args.output) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = arm_config(document, name, args.steps, args.initial_model)
    started = time.perf_counter()
    outcome = train(config, run_dir, resume=(run_dir / "checkpoint").exists(), device=args.device,
                    progress=not args.quiet)
    bundle = load_bundle(outcome.model_dir)
    row = {"arm": name, "datasets": len(config.datasets), "steps": outcome.steps,
           "train_seconds": round(outcome.seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
           "reports": {}}
    specs = {s: str(Path(args.holdout) / s) for s in VALIDATION} | NO_REGRESSION
    for measure, spec in specs.items():
        report = evaluate_model(bundle, [parse_data_spec(spec)], device=args.device)
        path = run_dir / f"{measure}.json"
        write_report(report, path, run_dir / f"{measure}.md", title=f"Data ablation, arm {name}: {measure}")
        row["reports"][measure] = str(path)
        row[measure] = report["overall"]["mean_structure_dice"]
    return row


def markdown_table(rows: list[dict]) -> str:
    measures = [*VALIDATION, *NO_REGRESSION]
    header = ["arm", "datasets", "steps", "train s", *measures, "CT validation vs full (95% CI)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        difference = row.get("ct_vs_full")
        ci = "-" if difference is None else (f"{difference['mean']:+.3f} ({difference['ci95'][0]:+.3f} to "
                                             f"{difference['ci95'][1]:+.3f})")
        lines.append("| " + " | ".join([row["arm"], str(row["datasets"]), str(row["steps"]),
                                         f"{row['train_seconds']:.0f}", *[f"{row[m]:.3f}" for m in measures], ci]) + " |")
    return "\n".join(lines)


def add_differences(rows: list[dict]) -> None:
    """Paired Dice difference to ``full`` over the CT validation cases (abdomen and pelvis together)."""
    def ct_report(row: dict) -> dict:
        cases = []
        for measure in ("ct_abdomen", "ct_pelvis"):
            cases += json.loads(Path(row["reports"][measure]).read_text(encoding="utf-8"))["cases"]
        return {"cases": cases}

    full = next((row for row in rows if row["arm"] == "full"), None)
    if full is None:
        return
    for row in rows:
        if row is not full:
            row["ct_vs_full"] = paired_difference(ct_report(row), ct_report(full))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default-v4.yaml"))
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, default=400, help="training steps per arm (the shared budget)")
    parser.add_argument("--initial-model", help="the warm start of every arm (default: the config's initial_model)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--holdout", default="runs/synthetic_holdout", help="experiments/synthetic_holdout.py's folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    document = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    missing = [s for s in VALIDATION if not (Path(args.holdout) / s).is_dir()]
    if missing:
        parser.error(f"no validation cases in {args.holdout} ({', '.join(missing)}); run experiments/synthetic_holdout.py first")
    rows = []
    for name in args.arms:
        print(f"== arm {name}", file=sys.stderr, flush=True)
        rows.append(run_arm(name, document, args))
    add_differences(rows)
    write_results(Path(args.output), "data_ablation", {"config": args.config, "steps": args.steps, "arms": rows},
                  markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
