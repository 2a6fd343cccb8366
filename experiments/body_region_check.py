#!/usr/bin/env python
"""How much of each reference structure lies outside the CT body region (``DuPLUSLib.body_region``).

The body constraint removes every CT prediction outside that region, so it may only be used where
no reference lies there. This counts, on the model grid, the reference voxels outside the region
for every case of Decathlon-layout CT folders (a training CT, validation sets, a phantom sample):

    python experiments/body_region_check.py data/ts-example-ct runs/synthetic_holdout/ct_* -o runs/body_region_check.json

Prints one line per folder and writes every case's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="Decathlon folders of CT cases (imagesTr, labelsTr)")
    parser.add_argument("--spacing", type=float, default=4.0, help="model grid (mm), as the bundled model's")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    from DuPLUSLib.body_region import ct_body_region
    from DuPLUSLib.imageio import read_image
    from DuPLUSLib.preprocessing import resample_onto, resample_to_spacing

    spacing = (args.spacing,) * 3
    records = []
    for folder in map(Path, args.folders):
        outside_total = reference_total = 0
        for label_path in sorted((folder / "labelsTr").glob("*.nii*")):
            image_path = folder / "imagesTr" / label_path.name
            if not image_path.exists():  # Decathlon's channel suffix
                image_path = folder / "imagesTr" / label_path.name.replace(".nii", "_0000.nii")
            grid = resample_to_spacing(read_image(image_path), spacing)
            labels = resample_onto(read_image(label_path), grid, "nearest", 0, dtype=np.int32)
            region = ct_body_region(grid.array)
            outside = np.bincount(labels[~region], minlength=labels.max() + 1)[1:]
            total = np.bincount(labels.ravel(), minlength=labels.max() + 1)[1:]
            records.append({"folder": str(folder), "case": label_path.name,
                            "reference_voxels": int(total.sum()), "outside_voxels": int(outside.sum()),
                            "outside_by_label": {str(v + 1): int(n) for v, n in enumerate(outside) if n}})
            outside_total += int(outside.sum())
            reference_total += int(total.sum())
        print(f"{folder}: {outside_total} of {reference_total} reference voxels outside the body region")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
