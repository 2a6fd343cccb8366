"""Scoring a model on real scans whose references lie on their own grids, in world coordinates.

A reference mask may sit on another grid than its image: a DICOM series and its NIfTI conversion
can order rows oppositely, and a cropped reference covers part of its scan. Each predicted mask is
therefore resampled (nearest neighbour, through LPS millimetres) onto its reference's grid before
Dice is computed; voxels are never compared index by index across files.

The cases come from a ``cases.json`` (``duplus data get totalsegmentator-evaluation`` writes one)::

    {"cases": [{"name": "ts_mr", "image": "ts_mr/image.nii.gz",
                "contexts": {"MRI/abdomen": {"liver": "ts_mr/liver.nii.gz", ...}}}, ...]}

The same functions measure the *ceiling* of a grid: the reference itself taken onto the model's grid
and back, which is the best any model on that grid can score.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..imageio import VolumeImage, read_image
from ..preprocessing import resample_mask_to_spacing, resample_onto, canonical_grid

__all__ = ["dice", "mask_onto", "grid_ceiling", "evaluate_world_cases", "load_cases", "markdown_table"]


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks on one grid; both empty counts as 1."""
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & reference).sum()) / total


def mask_onto(mask: VolumeImage, reference: VolumeImage) -> np.ndarray:
    """``mask`` (0/1 on its own grid) resampled onto ``reference``'s voxels through world coordinates."""
    return resample_onto(mask.with_array(mask.array.astype(np.float32)), reference, "nearest", 0.0) >= 0.5


def grid_ceiling(reference: VolumeImage, spacing: tuple[float, float, float]) -> float:
    """Dice of a reference mask after a round trip through a model grid of ``spacing`` mm: the
    reference is resampled onto the grid as training does, then back as inference does (linear,
    cut at one half)."""
    on_grid = resample_mask_to_spacing(reference.array > 0, reference, spacing)
    grid = canonical_grid(reference, spacing).with_array(on_grid.astype(np.float32))
    back = resample_onto(grid, reference, "linear", 0.0) >= 0.5
    return dice(back, reference.array > 0)


def load_cases(path: str | os.PathLike[str]) -> tuple[Path, list[dict]]:
    path = Path(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    return path.parent, document["cases"]


def evaluate_world_cases(
    segment: Callable[[VolumeImage, str, list[str]], dict[str, VolumeImage]],
    cases_json: str | os.PathLike[str],
) -> list[dict]:
    """One record per (case, structure): ``segment(image, context, structures)`` returns a mask
    (on any grid) per structure; each is scored against its reference in world coordinates."""
    folder, cases = load_cases(cases_json)
    records = []
    for case in cases:
        image = read_image(folder / case["image"])
        for context, references in case["contexts"].items():
            if not references:
                continue
            predictions = segment(image, context, list(references))
            for key, reference_path in references.items():
                reference = read_image(folder / reference_path)
                predicted = mask_onto(predictions[key], reference)
                expected = reference.array > 0
                voxel_ml = float(np.prod(reference.spacing)) / 1000
                records.append({
                    "case": case["name"], "context": context, "structure": key,
                    "dice": round(dice(predicted, expected), 4),
                    "reference_ml": round(float(expected.sum()) * voxel_ml, 1),
                    "predicted_ml": round(float(predicted.sum()) * voxel_ml, 1),
                })
    return records


def markdown_table(records: list[dict]) -> str:
    lines = ["| case | context | structure | Dice | reference ml | predicted ml |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['case']} | {r['context']} | {r['structure']} | {r['dice']:.3f} | {r['reference_ml']} | {r['predicted_ml']} |")
    if records:
        lines.append(f"| **mean** | | {len(records)} structures | **{np.mean([r['dice'] for r in records]):.3f}** | | |")
    return "\n".join(lines)
