#!/usr/bin/env python
"""Experiment (a) of issue 3: what do the two text prompts buy, on the same budget?

Arms (``experiments/configs/ablation.yaml``), identical in data, steps, seed and network width:

* ``dual``: DuPLUS: the context prompt conditions the backbone (FiLM), the target prompt drives the head;
* ``target_only``: the target prompt alone (no context conditioning);
* ``onehot``: the same network told by one-hot task codes instead of sentences.

Each arm is a ``duplus train`` run (resumable: rerun the script to continue), then ``duplus evaluate``
on held-out phantom seeds of the same contexts. Writes ``OUT/ablation.json`` and ``OUT/ablation.md``
and prints the table. The arms share one case cache, so phantoms are built once.

    python experiments/ablation.py -o runs/ablation                      # the full budget (hours)
    python experiments/ablation.py -o /tmp/abl --steps 20 --cases 1 --contexts CT/abdomen \\
        --eval-seeds 1000-1000 --eval-spacing 8 --spacing 8 --channels 8 16 --patch 16   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import yaml

from DuPLUSLib.bundle import load_bundle
from DuPLUSLib.ontology import load_ontology
from DuPLUSLib.training.config import TrainingConfig
from DuPLUSLib.training.evaluate import DataSource, evaluate_model, parse_data_spec, write_report
from DuPLUSLib.training.loop import train

HERE = Path(__file__).resolve().parent


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "configs" / "ablation.yaml"))
    parser.add_argument("-o", "--output", required=True, help="experiment folder (runs, reports)")
    parser.add_argument("--arms", nargs="+", help="only these arms (default: all of the config)")
    parser.add_argument("--steps", type=int, help="training steps per arm")
    parser.add_argument("--cases", type=int, help="phantom cases per context")
    parser.add_argument("--contexts", nargs="+", help="MODALITY/region contexts, e.g. CT/abdomen MRI/brain")
    parser.add_argument("--patch", type=int, help="cubic patch size (a multiple of 2^(stages-1))")
    parser.add_argument("--spacing", type=float, help="isotropic model grid spacing (mm)")
    parser.add_argument("--channels", type=int, nargs="+", help="network widths per stage, e.g. 8 16")
    parser.add_argument("--eval-seeds", help="held-out seeds, e.g. 1000-1004")
    parser.add_argument("--eval-spacing", type=float, help="isotropic spacing (mm) of the held-out phantoms")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def training_values(document: dict, args: argparse.Namespace) -> dict:
    """The shared training config with the command line's budget applied."""
    values = copy.deepcopy(document["training_config"])
    dataset = values["datasets"][0]
    if args.cases:
        dataset["cases"] = args.cases
    if args.contexts:
        dataset["contexts"] = list(args.contexts)
    if args.steps:
        values["training"]["steps"] = args.steps
        values["training"]["checkpoint_every"] = min(values["training"].get("checkpoint_every", 100), args.steps)
        values["training"]["warmup_steps"] = min(values["training"].get("warmup_steps", 50), max(1, args.steps // 10))
    if args.patch:
        values.setdefault("inference", {})["patch_size"] = [args.patch] * 3
    if args.spacing:
        values.setdefault("inference", {})["spacing"] = [args.spacing] * 3
    if args.channels:
        values.setdefault("network", {})["channels"] = list(args.channels)
    return values


def held_out(values: dict, evaluation: dict, args: argparse.Namespace) -> DataSource:
    contexts = values["datasets"][0].get("contexts", "all")
    contexts_text = "all" if contexts == "all" else ",".join(contexts)
    seeds = args.eval_seeds or str(evaluation.get("seeds", "1000-1004"))
    spacing = args.eval_spacing if args.eval_spacing is not None else evaluation.get("spacing")
    spec = f"phantom:{contexts_text}:seeds={seeds}" + (f":spacing={spacing}" if spacing else "")
    source = parse_data_spec(spec, ontology=load_ontology())
    source.label = "held-out"
    return source


def run_arm(name: str, change: dict, values: dict, output: Path, evaluation: DataSource, args) -> dict | None:
    arm_values = copy.deepcopy(values)
    arm_values["name"] = f"{values['name']}-{name}"
    arm_values.setdefault("network", {})["conditioning"] = change["conditioning"]
    arm_values.setdefault("prompts", {})["code"] = change["code"]
    config = TrainingConfig.from_dict(arm_values)
    run_dir = output / name
    run_dir.mkdir(parents=True, exist_ok=True)
    shared = output / "cases"
    shared.mkdir(exist_ok=True)
    if not (run_dir / "cases").exists():
        (run_dir / "cases").symlink_to(shared.resolve(), target_is_directory=True)
    resume = (run_dir / "checkpoint").exists()
    started = time.perf_counter()
    outcome = train(config, run_dir, resume=resume, device=args.device, progress=not args.quiet)
    if outcome.model_dir is None:  # a non-main rank under torchrun
        return None
    bundle = load_bundle(outcome.model_dir)
    report = evaluate_model(bundle, [evaluation], device=args.device)
    write_report(report, run_dir / "evaluation.json", run_dir / "evaluation.md", title=f"Ablation arm {name}")
    by_modality = {row["modality"]: row["dice_mean"] for row in report["by_dataset"]}
    return {
        "arm": name,
        "conditioning": change["conditioning"],
        "code": change["code"],
        "parameters": bundle.network.count_parameters(),
        "steps": outcome.steps,
        "train_seconds": round(outcome.seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(outcome.final_loss, 4),
        "mean_structure_dice": report["overall"]["mean_structure_dice"],
        "dice_by_modality": by_modality,
        "hd95_mean_mm": report["overall"]["hd95_mean_mm"],
        "report": str(run_dir / "evaluation.json"),
    }


def paired_difference(report: dict, reference: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean Dice difference to the reference arm over the same (case, structure) pairs, with a 95 %
    bootstrap interval that resamples whole cases within each context: the structures of one case
    are not independent, and every resample keeps the contexts' mix of structures."""
    import numpy as np

    reference_cases = {case["name"]: case["structures"] for case in reference["cases"]}
    per_case, contexts = [], {}
    for case in report["cases"]:
        theirs = reference_cases[case["name"]]
        contexts.setdefault((case["modality"], case["region"]), []).append(len(per_case))
        per_case.append(np.array([mine["dice"] - theirs[name]["dice"] for name, mine in case["structures"].items()]))
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        drawn = [per_case[i] for members in contexts.values() for i in rng.choice(members, size=len(members))]
        means.append(float(np.mean(np.concatenate(drawn))))
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(np.mean(np.concatenate(per_case))), "ci95": [float(low), float(high)],
            "pairs": int(sum(len(c) for c in per_case)), "cases": len(per_case)}


def add_differences(rows: list[dict], reference_arm: str = "dual") -> None:
    """Each row's ``vs_<reference_arm>``: its paired Dice difference to that arm."""
    reports = {row["arm"]: json.loads(Path(row["report"]).read_text(encoding="utf-8")) for row in rows}
    if reference_arm not in reports:
        return
    for row in rows:
        if row["arm"] != reference_arm:
            row[f"vs_{reference_arm}"] = paired_difference(reports[row["arm"]], reports[reference_arm])


def markdown_table(rows: list[dict]) -> str:
    modalities = sorted({m for row in rows for m in row["dice_by_modality"]})
    header = ["arm", "context prompt", "prompt code", "parameters", "steps", "train s", "mean Dice",
              "vs dual (95% CI)", *[f"Dice {m}" for m in modalities], "HD95 mm"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["arm"], "FiLM" if row["conditioning"] == "film" else row["conditioning"], row["code"],
                 f"{row['parameters']:,}", str(row["steps"]), f"{row['train_seconds']:.0f}",
                 _fmt(row["mean_structure_dice"]), _difference(row.get("vs_dual")),
                 *[_fmt(row["dice_by_modality"].get(m)) for m in modalities],
                 _fmt(row["hd95_mean_mm"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference(value: dict | None) -> str:
    if value is None:
        return "-"
    low, high = value["ci95"]
    return f"{value['mean']:+.3f} ({low:+.3f} to {high:+.3f})"


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    document = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    values = training_values(document, args)
    evaluation = held_out(values, document.get("evaluation", {}), args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    arms = {k: v for k, v in document["arms"].items() if not args.arms or k in args.arms}
    rows = []
    for name, change in arms.items():
        print(f"== arm {name}: conditioning {change['conditioning']}, code {change['code']}", file=sys.stderr, flush=True)
        row = run_arm(name, change, values, output, evaluation, args)
        if row is None:
            return 0
        rows.append(row)
    add_differences(rows)
    result = {"experiment": "ablation", "config": args.config, "training": values,
              "evaluation": evaluation.describe(), "arms": rows}
    write_results(output, "ablation", result, markdown_table(rows))
    return 0


def write_results(output: Path, name: str, result: dict, table: str) -> None:
    """``OUT/NAME.json`` and ``OUT/NAME.md``, and the table printed: what every experiment leaves."""
    (output / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (output / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
