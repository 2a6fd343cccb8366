#!/usr/bin/env python
"""Which structures a model keeps as their largest connected part, chosen on validation data.

For each validation case the model segments every labelled structure twice, exactly as inference
runs: once without post-processing and once keeping every structure's largest part
(``DuPLUSLib.postprocessing``, applied on the model grid); each structure's Dice is scored both ways. A structure
is chosen when that raises its mean Dice over the validation cases by at least ``--min-gain`` and
lowers no case by more than ``--max-loss``; a structure seen in fewer than ``--min-cases`` cases
is never chosen. As in nnU-Net, the choice is made on validation data only, never on the data a
model is reported on.

It also measures the warning inference gives where the parts dropped are large beside the part kept
(``DroppedParts.worth_checking``), as if every structure kept its largest part: on how many cases it
fires, and how many of the cases where keeping the largest part cost Dice (``--costly``) it catches.

The chosen keys go into the training config's ``inference.largest_component`` (left out of the
run's fingerprint), and ``duplus train CONFIG -o RUN --export RUN/model`` writes the bundle again
with them (from the run's last checkpoint, the same weights as a finished run's model):

    python experiments/choose_postprocessing.py --model runs/v7/model \\
        --data runs/synthetic_holdout/ct_abdomen --data runs/synthetic_holdout/ct_pelvis -o runs/postprocessing.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model folder to choose for")
    parser.add_argument("--data", action="append", required=True, help="validation data, as duplus evaluate --data")
    parser.add_argument("--mapping", help="label mapping JSON of the Decathlon folders (default: FOLDER/mapping.json)")
    parser.add_argument("--min-gain", type=float, default=0.002, help="mean Dice gain a structure needs")
    parser.add_argument("--max-loss", type=float, default=0.05, help="largest Dice loss allowed on any one case")
    parser.add_argument("--min-cases", type=int, default=3, help="cases a structure must appear in")
    parser.add_argument("--costly", type=float, default=0.05, help="a Dice loss that the warning should flag")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("-o", "--output", required=True, help="report JSON")
    args = parser.parse_args(argv)

    import itertools

    from tqdm import tqdm

    from DuPLUSLib.bundle import load_bundle
    from DuPLUSLib.inference import Segmenter
    from DuPLUSLib.ontology import Prompt
    from DuPLUSLib.training.evaluate import parse_data_spec
    from DuPLUSLib.training.world_evaluation import dice

    segmenters = []
    for largest in (False, True):  # the same weights, without and with the post-processing for every structure
        bundle = load_bundle(args.model)
        names = tuple(bundle.ontology.structures) if largest else ()
        bundle.config.inference = dataclasses.replace(bundle.config.inference, largest_component=names)
        segmenters.append(Segmenter(bundle, device=args.device))
    sources = [parse_data_spec(spec, args.mapping) for spec in args.data]
    scores: dict[str, list[tuple[float, float]]] = defaultdict(list)  # structure -> (as found, largest part)
    warned: dict[str, list[bool]] = defaultdict(list)  # structure -> did inference say to check, per case
    for case in tqdm(itertools.chain.from_iterable(s.cases() for s in sources), desc="validation cases", unit="case"):
        prompts = [Prompt(case.modality, case.region, key) for key in case.labels]
        found, largest = (segmenter.segment(case.image, prompts) for segmenter in segmenters)
        for prompt, as_found, kept, entry in zip(prompts, found.segments, largest.segments, largest.report()["segments"]):
            reference = case.labels[prompt.structure]
            scores[prompt.structure].append((dice(as_found.mask, reference), dice(kept.mask, reference)))
            warned[prompt.structure].append(entry["check"])
    rule = {"min_gain": args.min_gain, "max_loss": args.max_loss, "min_cases": args.min_cases}
    report = {"model": args.model, "data": args.data, "mapping": args.mapping, "rule": rule,
              "structures": {}, "largest_component": []}
    for key, pairs in sorted(scores.items()):
        mean_found = sum(p[0] for p in pairs) / len(pairs)
        mean_kept = sum(p[1] for p in pairs) / len(pairs)
        worst = max(p[0] - p[1] for p in pairs)
        chosen = len(pairs) >= args.min_cases and mean_kept - mean_found >= args.min_gain and worst <= args.max_loss
        report["structures"][key] = {"cases": len(pairs), "dice_as_found": round(mean_found, 4),
                                     "dice_largest_part": round(mean_kept, 4), "worst_case_loss": round(worst, 4),
                                     "chosen": chosen, "warning_fired": sum(warned[key])}
        if chosen:
            report["largest_component"].append(key)
    pairs = [(score, warn) for key in scores for score, warn in zip(scores[key], warned[key])]
    costly = [warn for (as_found, kept), warn in pairs if as_found - kept >= args.costly]
    report["warning"] = {"structure_cases": len(pairs), "fired": sum(warn for _, warn in pairs),
                         "costly": len(costly), "fired_on_costly": sum(costly), "costly_dice_loss": args.costly}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("| structure | cases | Dice as found | largest part | worst case loss | chosen |\n|---|---:|---:|---:|---:|---|")
    for key, row in report["structures"].items():
        print(f"| {key} | {row['cases']} | {row['dice_as_found']:.3f} | {row['dice_largest_part']:.3f} | "
              f"{row['worst_case_loss']:.3f} | {'yes' if row['chosen'] else ''} |")
    print(f"\ninference:\n  largest_component: [{', '.join(report['largest_component'])}]")
    warning = report["warning"]
    print(f"\nthe check warning, every structure kept as its largest part: fired on {warning['fired']} of "
          f"{warning['structure_cases']} structure cases; on {warning['fired_on_costly']} of the {warning['costly']} "
          f"where that cost {args.costly} Dice or more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
