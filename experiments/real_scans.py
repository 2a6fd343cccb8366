#!/usr/bin/env python
"""The model on real scans it never saw, scored in world coordinates; and the Dice ceiling of a grid.

    duplus data get totalsegmentator-evaluation -o data/ts-evaluation      # the scans kept back
    duplus data get slicerio-chest-evaluation -o data/slicerio-chest       # one more, a chest CT
    duplus data get robex-brain-evaluation -o data/robex-brain             # a real T1 head and its brain mask
    python experiments/real_scans.py --cases data/ts-evaluation/cases.json [--cases data/slicerio-chest/cases.json] \
        -o runs/real_scans [--model DIR]
    python experiments/real_scans.py --ceiling data/ts-example-ct -o runs/ceiling   # 4, 3 and 2 mm

The first scores every structure each case's references name, with the prompts of that case's
contexts. These scans are for reporting only: never train, tune or select a model on them.
The second takes the training CT's own labels onto each grid and back (the best any model on
that grid can do) and times the model's sliding window on each grid.
Writes ``OUT/real_scans.json`` and ``OUT/real_scans.md`` (or ``ceiling.*``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from DuPLUSLib.imageio import VolumeImage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--cases", action="append", help="cases.json of evaluation scans (repeat for more)")
    what.add_argument("--ceiling", help="a Decathlon folder whose labels measure the grid ceiling")
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--spacings", default="4,3,2", help="grids (mm) for --ceiling")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.cases:
        records = score(args.cases, args.model)
        name = "real_scans"
    else:
        records = ceiling(args.ceiling, [float(s) for s in args.spacings.split(",")])
        name = "ceiling"
    (out / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    from DuPLUSLib.training.world_evaluation import markdown_table

    table = markdown_table(records) if args.cases else ceiling_table(records)
    (out / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def score(cases: list[str], model: str | None) -> list[dict]:
    from DuPLUSLib.bundle import load_bundle
    from DuPLUSLib.inference import Segmenter
    from DuPLUSLib.training.world_evaluation import evaluate_world_cases

    segmenter = Segmenter(load_bundle(model))

    def segment(image: VolumeImage, context: str, structures: list[str]) -> dict[str, VolumeImage]:
        prompts = segmenter.parse_prompts([f"{context}/{key}" for key in structures])
        result = segmenter.segment(image, prompts)
        return {p.structure: result.reference.with_array(s.mask) for p, s in zip(prompts, result.segments)}

    return [record for path in cases for record in evaluate_world_cases(segment, path)]


def ceiling(folder: str, spacings: list[float]) -> list[dict]:
    from DuPLUSLib.training.decathlon import load_entry, load_mapping, read_dataset_json
    from DuPLUSLib.training.world_evaluation import grid_ceiling

    records = []
    for mapping_path in sorted(Path(folder).glob("mapping*.json")):
        mapping = load_mapping(mapping_path)
        for entry in read_dataset_json(folder):
            image, masks = load_entry(entry, mapping)
            for key, mask in masks.items():
                if not mask.any():
                    continue
                for spacing in spacings:
                    records.append({"case": entry.name, "structure": key, "spacing_mm": spacing,
                                    "ml": round(float(mask.sum()) * float(np.prod(image.spacing)) / 1000, 1),
                                    "dice": round(grid_ceiling(image.with_array(mask), (spacing,) * 3), 4)})
    return records


def ceiling_table(records: list[dict]) -> str:
    spacings = sorted({r["spacing_mm"] for r in records}, reverse=True)
    by = {}
    for r in records:
        by.setdefault(r["structure"], {})[r["spacing_mm"]] = r
    lines = ["| structure | ml | " + " | ".join(f"{s:g} mm" for s in spacings) + " |", "|---|---" + "|---" * len(spacings) + "|"]
    for key, row in by.items():
        lines.append(f"| {key} | {next(iter(row.values()))['ml']} | " + " | ".join(f"{row[s]['dice']:.3f}" for s in spacings) + " |")
    means = [np.mean([row[s]["dice"] for row in by.values()]) for s in spacings]
    lines.append("| **mean** | | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
