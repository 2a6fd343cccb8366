"""A three-plane preview PNG: a quick look at a result without opening Slicer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .imageio import SegmentMask, VolumeImage, atomic_output
from .preprocessing import resample_onto, canonical_grid

__all__ = ["render_preview"]


def render_preview(
    image: VolumeImage, segments: Sequence[SegmentMask], path: str | os.PathLike[str], spacing: float = 1.5
) -> Path:
    """Axial, coronal and sagittal slices through the segments' centre, overlays in segment colours.

    The volume is first put on an identity-direction grid so the planes are the patient's, whatever
    the scanner's orientation; slices are shown in radiological convention (patient left on the right).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = canonical_grid(image, (spacing, spacing, spacing))
    grey = resample_onto(image, grid, "linear")
    masks = [
        (s, resample_onto(image.with_array(s.mask.astype(np.float32)), grid, "linear", 0.0) >= 0.5)
        for s in segments
    ]
    union = np.zeros(grey.shape, dtype=bool)
    for _, mask in masks:
        union |= mask
    centre = [int(c.mean()) for c in np.nonzero(union)] if union.any() else [s // 2 for s in grey.shape]
    low, high = np.percentile(grey, [1, 99])

    # LPS arrays [k=S, j=P, i=L]; radiological display: patient right on the left, anterior up, superior up
    planes = {
        "axial": lambda a: a[centre[0], :, :],
        "coronal": lambda a: a[::-1, centre[1], :],
        "sagittal": lambda a: a[::-1, :, centre[2]],
    }
    found = [s for s, m in masks if m.any()]
    # the legend gets its own row, as tall as its entries need: 26 structures of a real CT fit, none overlaps a plane
    columns = max(1, min(4, len(found)))
    legend_height = 0.25 + 0.24 * -(-len(found) // columns) if found else 0.01
    figure = plt.figure(figsize=(12, 4.2 + legend_height), facecolor="black")
    layout = figure.add_gridspec(2, 3, height_ratios=[4.2, legend_height])
    axes = [figure.add_subplot(layout[0, column]) for column in range(3)]
    for axis, (title, cut) in zip(axes, planes.items()):
        axis.imshow(cut(grey), cmap="gray", vmin=low, vmax=high, interpolation="bilinear")
        for segment, mask in masks:
            plane = cut(mask)
            if plane.any():
                rgba = np.zeros((*plane.shape, 4))
                rgba[plane] = [*segment.structure.color_float, 0.45]
                axis.imshow(rgba, interpolation="nearest")
                axis.contour(plane, levels=[0.5], colors=[segment.structure.color_float], linewidths=0.8)
        axis.set_title(title, color="white")
        axis.axis("off")
    legend_axis = figure.add_subplot(layout[1, :])
    legend_axis.axis("off")
    if found:
        handles = [plt.Rectangle((0, 0), 1, 1, color=s.structure.color_float) for s in found]
        legend_axis.legend(handles, [s.structure.name for s in found], loc="upper center", ncol=columns,
                           frameon=False, labelcolor="white", fontsize=9)
    figure.tight_layout()
    with atomic_output(path, overwrite=True) as temporary:
        figure.savefig(temporary, dpi=90, facecolor="black", format="png")
    plt.close(figure)
    return Path(path)
