"""Keeping only a structure's largest connected part, for the structures a bundle names.

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

import numpy as np

__all__ = ["largest_component", "keep_largest_part"]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected part of a binary mask (the mask itself when it has one part or none).

    Labelled by SimpleITK, which every segmentation loads anyway to resample: SciPy's import alone
    added a fifth of a second to each ``duplus segment`` start.
    """
    import SimpleITK as sitk

    labeller = sitk.ConnectedComponentImageFilter()
    labeller.SetFullyConnected(True)  # parts touching at an edge or a corner are one part
    labelled = labeller.Execute(sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=bool).view(np.uint8)))
    parts = sitk.GetArrayViewFromImage(labelled)  # a view: valid while ``labelled`` lives
    if labeller.GetObjectCount() <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(parts.ravel())[1:]
    return parts == 1 + int(np.argmax(sizes))


def keep_largest_part(probability: np.ndarray, threshold: float) -> np.ndarray:
    """``probability`` with the voxels of every part of ``probability >= threshold`` but the largest
    set to 0. Parts that are not 26-connected share no 2x2x2 cell, so linear resampling of the result
    finds exactly the largest part, with the values it had."""
    found = probability >= threshold
    kept = largest_component(found)
    if kept is found:
        return probability
    return np.where(found & ~kept, np.zeros((), probability.dtype), probability)
