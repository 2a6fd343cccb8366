"""Keeping only a structure's largest connected part, for the structures a bundle names.

A liver, a spleen or an aorta is one piece; a blob the network finds elsewhere is a false positive.
As in nnU-Net, a model's post-processing is chosen per structure on validation data (here by
``experiments/choose_postprocessing.py``) and stored with the model, in its inference settings
(``largest_component``), because for structures made of several pieces (ribs, costal cartilages, a
colon cut by the field of view) it would delete true parts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .imageio import SegmentMask, mask_box

__all__ = ["keep_largest_component", "largest_component"]

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # parts touching at an edge or a corner are one part


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected part of a binary mask (the mask itself when it has one part or none)."""
    parts, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if count <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(parts.ravel())[1:]
    return parts == 1 + int(np.argmax(sizes))


def keep_largest_component(segment: SegmentMask) -> SegmentMask:
    """``segment`` with only its largest part, in that part's own box. The confidence stays the mean
    probability of the whole mask the network found: the probabilities are no longer at hand here."""
    kept = largest_component(segment.values)
    if segment.box is None:
        return SegmentMask(segment.structure, kept, segment.confidence)
    inner = mask_box(kept)
    if inner is None:
        return segment
    box = tuple(slice(outer.start + part.start, outer.start + part.stop) for outer, part in zip(segment.box, inner))
    return SegmentMask(segment.structure, kept[inner], segment.confidence, box, segment.grid_shape)  # type: ignore[arg-type]
