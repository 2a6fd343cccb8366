#!/usr/bin/env python
"""Experiment (b) of issue 3: a new centre, five labelled cases, LoRA against full fine-tuning.

The new centre is the phantom generator under a :class:`DuPLUSLib.phantoms.DomainShift` (intensity
scale and offset, more noise, coarser voxels, a softer kernel; ``experiments/configs/new_centre.yaml``).
Three models are scored on the same held-out new-centre cases:

* ``base``: the model as trained (the shipped default, ``--model``, or a base trained here);
* ``lora``: adapted with ``duplus finetune``'s LoRA on 5 labelled new-centre cases (backbone frozen);
* ``full``: every parameter fine-tuned on the same 5 cases, same steps and seed.

The goal in the issue: LoRA recovers at least 90 % of full fine-tuning's gain with at most 5 % of
the parameters trainable; ``gain_recovered`` = (lora - base) / (full - base) in mean Dice.
Writes ``OUT/new_centre.json`` and ``OUT/new_centre.md`` and prints the table.

    python experiments/new_centre.py -o runs/new_centre       # the shipped default model as the base
    python experiments/new_centre.py -o /tmp/nc --steps 10 --cases 2 --eval-seeds 3000-3001 --spacing 6   # a smoke run
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
from DuPLUSLib.training.config import TrainingConfig
from DuPLUSLib.training.evaluate import DataSource, evaluate_model, parse_data_spec, write_report
from DuPLUSLib.training.finetune import FinetuneSettings, finetune, prepare_cases, save_result

HERE = Path(__file__).resolve().parent


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "configs" / "new_centre.yaml"))
    parser.add_argument("-o", "--output", required=True, help="experiment folder")
    parser.add_argument("--model", help="base model folder (default: the config's, else train one)")
    parser.add_argument("--base-steps", type=int, help="steps of the base model trained here")
    parser.add_argument("--base-cases", type=int, help="phantom cases per context of a base trained here")
    parser.add_argument("--steps", type=int, help="adaptation steps (LoRA and full alike)")
    parser.add_argument("--cases", type=int, help="labelled new-centre cases (default 5)")
    parser.add_argument("--rank", type=int, help="LoRA rank")
    parser.add_argument("--contexts", nargs="+", help="MODALITY/region contexts, e.g. CT/abdomen")
    parser.add_argument("--eval-seeds", help="held-out new-centre seeds, e.g. 3000-3009")
    parser.add_argument("--spacing", type=float, help="isotropic phantom spacing (mm) before the shift's factor")
    parser.add_argument("--patch", type=int, help="cubic patch size of a base trained here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def base_model(document: dict, args: argparse.Namespace, output: Path) -> Path:
    """The base model folder: given, or trained here from ``base_training`` (resumable)."""
    if args.model or document.get("base_model"):
        return Path(args.model or document["base_model"])
    from DuPLUSLib.training.loop import train

    values = copy.deepcopy(document["base_training"])
    if args.contexts:
        values["datasets"][0]["contexts"] = list(args.contexts)
    if args.base_cases:
        values["datasets"][0]["cases"] = args.base_cases
    if args.base_steps:
        values["training"]["steps"] = args.base_steps
        values["training"]["checkpoint_every"] = min(values["training"].get("checkpoint_every", 100), args.base_steps)
        values["training"]["warmup_steps"] = min(values["training"].get("warmup_steps", 40), max(1, args.base_steps // 10))
    if args.patch:
        values.setdefault("inference", {})["patch_size"] = [args.patch] * 3
    run_dir = output / "base"
    outcome = train(TrainingConfig.from_dict(values), run_dir, resume=(run_dir / "checkpoint").exists(),
                    device=args.device, progress=not args.quiet)
    return outcome.model_dir


def phantoms(label: str, contexts: list[str], seeds: str, spacing: float | None, shift: dict | None) -> DataSource:
    spec = f"phantom:{','.join(contexts)}:seeds={seeds}" + (f":spacing={spacing}" if spacing else "")
    spec += "".join(f":{key}={value}" for key, value in (shift or {}).items())
    source = parse_data_spec(spec)
    source.label = label
    return source


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    document = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    adaptation = document["adaptation"]
    evaluation = document.get("evaluation", {})
    contexts = list(args.contexts or document["contexts"])
    spacing = args.spacing if args.spacing is not None else evaluation.get("spacing")
    shift = document["shift"]
    n_cases = args.cases or adaptation.get("cases", 5)
    first = int(adaptation.get("seeds_from", 2000))
    steps = args.steps or adaptation["steps"]
    rank = args.rank or adaptation["lora_rank"]

    bundle = load_bundle(base_model(document, args, output))
    labelled = phantoms("new-centre-train", contexts, f"{first}-{first + n_cases - 1}", spacing, shift)
    held_out = phantoms("new-centre", contexts, args.eval_seeds or str(evaluation.get("seeds", "3000-3009")),
                        spacing, shift)
    original = phantoms("original-centre", contexts, args.eval_seeds or str(evaluation.get("seeds", "3000-3009")),
                        spacing, None)

    def score(model, name: str) -> dict:
        report = evaluate_model(model, [held_out], device=args.device)
        write_report(report, output / f"{name}.json", output / f"{name}.md", title=f"New centre: {name}")
        return report

    rows = []
    started = time.perf_counter()
    base_original = evaluate_model(bundle, [original], device=args.device)["overall"]["mean_structure_dice"]
    base_report = score(bundle, "base")
    rows.append(_row("base", base_report, None, 0, time.perf_counter() - started))

    cases = prepare_cases(bundle, [labelled])
    common = {"steps": steps, "batch_size": adaptation.get("batch_size", 2), "seed": 0}
    arms = {
        "lora": FinetuneSettings(rank=rank, learning_rate=adaptation.get("lora_learning_rate"), **common),
        "full": FinetuneSettings(full=True, learning_rate=adaptation.get("full_learning_rate"), **common),
    }
    for name, settings in arms.items():
        print(f"== {name}: {steps} steps on {len(cases)} new-centre cases", file=sys.stderr, flush=True)
        result = finetune(bundle, cases, settings, device=args.device, name=f"new-centre-{name}")
        save_result(result, output / f"{name}_model")
        rows.append(_row(name, score(result.bundle, name), result.trainable, steps, result.seconds))

    dice = {row["arm"]: row["mean_structure_dice"] for row in rows}
    gain_full = dice["full"] - dice["base"]
    recovered = (dice["lora"] - dice["base"]) / gain_full if gain_full > 1e-6 else None
    result = {
        "experiment": "new_centre",
        "config": args.config,
        "base_model": str(bundle.path),
        "shift": shift,
        "contexts": contexts,
        "labelled_cases": labelled.describe(),
        "evaluation": held_out.describe(),
        "base_dice_original_centre": base_original,
        "arms": rows,
        "gain_recovered": None if recovered is None else round(recovered, 3),
        "goal": "LoRA recovers >= 90% of full fine-tuning's gain with <= 5% of the parameters trainable",
    }
    (output / "new_centre.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(rows, base_original, result["gain_recovered"])
    (output / "new_centre.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def _row(arm: str, report: dict, trainable: dict | None, steps: int, seconds: float) -> dict:
    return {
        "arm": arm,
        "trainable_parameters": trainable["trainable_parameters"] if trainable else 0,
        "trainable_fraction": round(trainable["trainable_fraction"], 4) if trainable else 0.0,
        "steps": steps,
        "seconds": round(seconds, 1),
        "mean_structure_dice": report["overall"]["mean_structure_dice"],
        "hd95_mean_mm": report["overall"]["hd95_mean_mm"],
        "dice_by_structure": {row["structure"]: row["dice_mean"] for row in report["by_structure"]},
    }


def markdown_table(rows: list[dict], base_original: float | None, recovered: float | None) -> str:
    lines = ["| model | trainable parameters | trainable % | steps | seconds | mean Dice (new centre) | HD95 mm |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        hd = "-" if row["hd95_mean_mm"] is None else f"{row['hd95_mean_mm']:.1f}"
        lines.append(f"| {row['arm']} | {row['trainable_parameters']:,} | {100 * row['trainable_fraction']:.2f} | "
                     f"{row['steps']} | {row['seconds']:.0f} | {row['mean_structure_dice']:.3f} | {hd} |")
    if base_original is not None:
        lines.append(f"\nBase model on the original centre: mean Dice {base_original:.3f}.")
    if recovered is not None:
        lines.append(f"LoRA recovers {100 * recovered:.0f} % of full fine-tuning's gain.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
