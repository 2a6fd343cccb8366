"""Keeping only a structure's largest connected part, for the structures a bundle names, and
saying when the part kept may be the wrong one.

A liver, a spleen or an aorta is one piece; a blob the network finds elsewhere is a false positive.
As in nnU-Net, a model's post-processing is chosen per structure on validation data (here by
``experiments/choose_postprocessing.py``) and stored with the model, in its inference settings
(``largest_component``), because for structures made of several pieces (ribs, costal cartilages, a
colon cut by the field of view) it would delete true parts.

It works on the model grid, before the probabilities go back to the input grid: there a structure
costs a few hundred thousand voxels however fine the scan, and every part it drops is dropped from
the mask, the confidence and the probabilities alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DroppedParts", "connected_parts", "dropped_parts_warning", "keep_largest_part"]

# Dropped parts of at least this share of the kept part's volume: the choice between them was not
# clear-cut, and a false finding can outgrow a small true organ (a real MR's spleen did), so the
# user is asked to look.
CHECK_DROPPED_FRACTION = 0.5


@dataclass(frozen=True)
class DroppedParts:
    """What keeping a structure's largest part removed, and what it kept, both on the model grid."""

    parts: int = 0
    volume_ml: float = 0.0
    kept_ml: float = 0.0

    @property
    def worth_checking(self) -> bool:
        """Whether the removed parts are large enough beside the kept one that it may be the wrong one."""
        return self.parts > 0 and self.volume_ml >= CHECK_DROPPED_FRACTION * self.kept_ml


def connected_parts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected parts of a binary mask (0: background, 1..n: parts) and each part's size.

    Labelled by SimpleITK, which every segmentation loads anyway to resample: SciPy's import alone
    added a fifth of a second to each ``duplus segment`` start.
    """
    import SimpleITK as sitk

    labeller = sitk.ConnectedComponentImageFilter()
    labeller.SetFullyConnected(True)  # parts touching at an edge or a corner are one part
    labelled = labeller.Execute(sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=bool).view(np.uint8)))
    parts = sitk.GetArrayFromImage(labelled)
    return parts, np.bincount(parts.ravel(), minlength=labeller.GetObjectCount() + 1)[1:]


def keep_largest_part(probability: np.ndarray, threshold: float, voxel_ml: float) -> tuple[np.ndarray, DroppedParts]:
    """``probability`` with the voxels of every part of ``probability >= threshold`` but the largest
    set to 0, and what was dropped. Parts that are not 26-connected share no 2x2x2 cell, so linear
    resampling of the result finds exactly the largest part, with the values it had."""
    found = probability >= threshold
    parts, sizes = connected_parts(found)
    if len(sizes) <= 1:
        return probability, DroppedParts()
    largest = int(np.argmax(sizes))
    dropped = DroppedParts(len(sizes) - 1, float(sizes.sum() - sizes[largest]) * voxel_ml, float(sizes[largest]) * voxel_ml)
    return np.where(found & (parts != 1 + largest), np.zeros((), probability.dtype), probability), dropped


def dropped_parts_warning(entry: dict) -> str | None:
    """What to tell the user about one segment of a report (``SegmentationResult.report``) whose
    dropped parts are worth checking; None for the others."""
    if not entry.get("check"):
        return None
    parts = entry["dropped_parts"]
    return (f"{entry['name']}: only its largest part is kept ({entry['volume_ml']:.1f} ml); {parts} other "
            f"part{'s' if parts > 1 else ''} of {entry['dropped_ml']:.1f} ml in all were removed. Look at the image "
            "to confirm that the part kept is the right one")
