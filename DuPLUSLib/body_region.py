"""The region a CT's patient occupies, so that nothing is segmented in the air around them.

Every structure the ontology names lies inside the body, yet a network that learnt "air in a chest
is lung" also finds lung in the air between the patient and the scanner's field of view (seen on a
real chest CT: a third of the lung it found). Hounsfield units are calibrated, so on CT the body is
found without a model: tissue is denser than -500 HU; the body is every 3D-connected part of tissue
at least a tenth of the largest (the trunk, and arms that touch it nowhere, but not the noise of the
air); and in each axial slice the body region is the convex hull of that slice's body voxels. A hull
rather than a filled outline keeps the lungs, the airways and bowel gas, and in a scan cropped
through the patient everything between the body's edges, where a filled outline would lose the air
that touches the crop.

Works on the model grid (identity direction, LPS, array ``[k, j, i]``: ``k`` runs foot to head), on
which inference already holds the image.
"""

from __future__ import annotations

import numpy as np

from .postprocessing import connected_parts

__all__ = ["TISSUE_HU", "ct_body_region", "cut_to_region"]

TISSUE_HU = -500.0  # between air (-1000) and fat (-100): the usual cut for a CT body mask
MIN_PART_FRACTION = 0.1  # a body part at least this share of the largest is body, not noise
# How far (voxels) beyond the hull's edge still counts as inside: the skin's voxels blend muscle with
# the air outside and can fall below TISSUE_HU while a structure's label still reaches them.
SURFACE_MARGIN = 1.0


def ct_body_region(hu: np.ndarray, tissue_hu: float = TISSUE_HU) -> np.ndarray:
    """A boolean ``[k, j, i]`` mask of the body region of a CT in Hounsfield units, per axial slice
    the convex hull of the body's voxels (all False in a slice without body)."""
    body = _body_parts(hu > tissue_hu)
    region = np.zeros(hu.shape, dtype=bool)
    for k in np.nonzero(body.any(axis=(1, 2)))[0]:
        region[k] = convex_hull_2d(body[k], SURFACE_MARGIN)
    return region


def _body_parts(tissue: np.ndarray) -> np.ndarray:
    """The 26-connected parts of ``tissue`` at least ``MIN_PART_FRACTION`` of the largest."""
    parts, sizes = connected_parts(tissue)
    if len(sizes) == 0:
        return tissue
    kept = np.concatenate([[False], sizes >= MIN_PART_FRACTION * sizes.max()])
    return kept[parts]


def convex_hull_2d(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The pixels of a 2D grid inside the convex hull of ``mask``'s pixel centres (``mask`` included),
    grown by ``margin`` pixels.

    The hull's corners are among each row's first and last pixels (Andrew's monotone chain); a
    pixel is inside when it lies on the inner side of every edge, within half a pixel plus
    ``margin``, so a pixel the hull's edge passes through counts as inside.
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    first = mask[rows].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    points = np.unique(np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)]), axis=0)
    hull = _monotone_chain(points.astype(float))
    inside = mask.copy()
    if len(hull) < 3:  # a point or a line: the mask itself
        return inside
    r, c = np.indices(mask.shape, dtype=float)
    within = np.ones(mask.shape, dtype=bool)
    for start, end in zip(hull, np.roll(hull, -1, axis=0)):
        edge = end - start
        # counter-clockwise hull: inside is to the left of each edge, i.e. cross(edge, p - start) >= 0
        within &= edge[0] * (c - start[1]) - edge[1] * (r - start[0]) >= -(0.5 + margin) * np.hypot(*edge)
    return inside | within


def _monotone_chain(points: np.ndarray) -> np.ndarray:
    """The convex hull of sorted, distinct 2D points, counter-clockwise in (row, column) axes."""

    def turn(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[np.ndarray] = []
    for point in points:
        while len(lower) >= 2 and turn(lower[-2], lower[-1], point) <= 0:
            lower.pop()
        lower.append(point)
    upper: list[np.ndarray] = []
    for point in points[::-1]:
        while len(upper) >= 2 and turn(upper[-2], upper[-1], point) <= 0:
            upper.pop()
        upper.append(point)
    return np.array(lower[:-1] + upper[:-1])


def cut_to_region(probability: np.ndarray, region: np.ndarray, threshold: float, voxel_ml: float) -> tuple[np.ndarray, float]:
    """``probability`` set to 0 outside ``region``, and the volume (ml) found there that this removed."""
    outside = ~region
    if not outside.any():
        return probability, 0.0
    removed = int(np.count_nonzero(probability[outside] >= threshold))
    return np.where(outside, np.zeros((), probability.dtype), probability), round(removed * voxel_ml, 3)
