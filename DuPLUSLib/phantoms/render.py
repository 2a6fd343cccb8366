"""Paint an :class:`Anatomy` into a voxel grid: per-tissue channels with partial volume, and labels.

Each layer's signed distance, sampled at voxel centres, becomes a coverage fraction through a linear
ramp one voxel wide (``0.5 - d / voxel``): a voxel half inside gets half the tissue, which is what a
scanner's finite voxel does to an edge. Layers are composited back to front, so the image shows
partial volume at every boundary while labels stay crisp (a structure owns a voxel when at least half
of it is visibly that structure).

Channels are whatever the imaging model needs per tissue (CT: HU and texture; ultrasound:
echogenicity, attenuation, reflectivity); the renderer only blends vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .anatomy import Anatomy
from .geometry import Acquisition, Warp

__all__ = ["Canvas", "paint"]


@dataclass
class Canvas:
    """What the renderer hands to the imaging model."""

    channels: np.ndarray  # [channel, k, j, i] float32
    labels: dict[str, np.ndarray]  # key -> bool [k, j, i]
    body: np.ndarray  # bool [k, j, i]


def paint(
    anatomy: Anatomy,
    acquisition: Acquisition,
    warp: Warp,
    tissue_values: Callable[[str], np.ndarray],
    background: np.ndarray,
) -> Canvas:
    """Render every layer; ``tissue_values(tissue)`` gives the channel vector of a tissue."""
    px, py, pz = warp.canonical_grid(acquisition)
    width = acquisition.voxel_size
    background = np.asarray(background, dtype=np.float32)
    channels = np.empty((len(background), *acquisition.shape_kji), dtype=np.float32)
    channels[:] = background[:, None, None, None]

    painted: list[tuple[int, tuple[slice, slice, slice], np.ndarray]] = []
    for index, layer in enumerate(anatomy.layers):
        box = acquisition.index_box(*warp.world_box(*layer.shape.bounds()))
        if box is None:
            continue
        fraction = coverage_fraction(layer.shape, px[box], py[box], pz[box], acquisition.spacing, width)
        if not fraction.any():
            continue
        values = np.asarray(tissue_values(layer.tissue), dtype=np.float32)
        region = channels[(slice(None), *box)]
        region += fraction[None] * (values[:, None, None, None] - region)
        painted.append((index, box, fraction))

    labels = _visible_labels(anatomy, painted, acquisition.shape_kji)
    for key, parts in anatomy.label_unions.items():  # e.g. a PET "lesion" includes GTVp and GTVn
        union = labels.get(key, np.zeros(acquisition.shape_kji, dtype=bool))
        for part in parts:
            if part in labels:
                union = union | labels[part]
        labels[key] = union
    body = anatomy.body.sdf(px, py, pz) < 0
    return Canvas(channels, labels, body)


#: Block edge (voxels) for the coarse pass of :func:`coverage_fraction`.
BLOCK = 4
#: How much the warp and the approximate distance functions may stretch distances (conservative).
DISTANCE_SAFETY = 1.6


def coverage_fraction(shape, x: np.ndarray, y: np.ndarray, z: np.ndarray, spacing, width: float) -> np.ndarray:
    """The fraction of each voxel covered by ``shape``: a one-voxel ramp across its surface.

    Most of a layer's box is far from its surface, where the answer is plainly 0 or 1. So the
    distance is first sampled once per block of ``BLOCK``^3 voxels; only blocks the surface may cross
    are evaluated voxel by voxel. This is what makes many-segment tubes (colon, ribs) affordable.
    """
    n = x.shape
    if int(np.prod(n)) < 4 * BLOCK**3:
        return np.clip(0.5 - shape.sdf(x, y, z) / width, 0.0, 1.0).astype(np.float32)
    # One sample at the middle of each block (also of the last, partial one).
    samples = []
    for size in n:
        starts = np.arange(0, size, BLOCK)
        samples.append(starts + (np.minimum(BLOCK, size - starts) - 1) // 2)
    grid = np.ix_(*samples)
    coarse = shape.sdf(x[grid], y[grid], z[grid])
    reach = DISTANCE_SAFETY * (BLOCK // 2) * float(np.linalg.norm(spacing)) + width
    near = np.abs(coarse) < reach
    fraction = (coarse < 0).astype(np.float32)
    for axis, size in enumerate(n):
        fraction = np.repeat(fraction, BLOCK, axis=axis).take(np.arange(size), axis=axis)
        near = np.repeat(near, BLOCK, axis=axis).take(np.arange(size), axis=axis)
    if near.any():
        d = shape.sdf(x[near], y[near], z[near])
        fraction[near] = np.clip(0.5 - d / width, 0.0, 1.0)
    return fraction


def _visible_labels(anatomy: Anatomy, painted, shape_kji) -> dict[str, np.ndarray]:
    """Per structure, the voxels it visibly fills at least half of once every layer is composited.

    Compositing follows the painter: a layer covering a fraction ``f`` of a voxel leaves ``1 - f`` of
    each label there (except labels it lies within), and its own label becomes ``f + (1 - f) * before``,
    so nested parts of one structure (a bone's cortex and marrow) are not counted twice. Each label's
    coverage is kept only over the box its layers span.
    """
    coverage: dict[str, tuple[tuple[slice, slice, slice], np.ndarray]] = {}
    for index, box, fraction in painted:
        layer = anatomy.layers[index]
        for key, (extent, cover) in coverage.items():
            if key == layer.key or key in layer.within:
                continue
            overlap = _intersect(extent, box)
            if overlap is not None:
                cover[_local(overlap, extent)] *= 1.0 - fraction[_local(overlap, box)]
        if not layer.key:
            continue
        if layer.key in coverage:
            extent, cover = coverage[layer.key]
            grown = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(extent, box))
            if grown != extent:
                bigger = np.zeros(tuple(g.stop - g.start for g in grown), dtype=np.float32)
                bigger[_local(extent, grown)] = cover
                extent, cover = grown, bigger
        else:
            extent, cover = box, np.zeros(fraction.shape, dtype=np.float32)
        target = cover[_local(box, extent)]
        target += fraction * (1.0 - target)
        coverage[layer.key] = (extent, cover)

    labels = {}
    for key in sorted(anatomy.keys):
        mask = np.zeros(shape_kji, dtype=bool)
        if key in coverage:
            extent, cover = coverage[key]
            local = cover >= 0.5
            if not local.any() and cover.max() > 0.05:
                # Thinner than a voxel (an optic nerve at 4 mm): keep its most covered voxel so the
                # structure is not silently lost at coarse resolution.
                local.flat[int(np.argmax(cover))] = True
            mask[extent] = local
        labels[key] = mask
    return labels


def _local(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """``inner`` (global slices) as slices into an array that spans ``outer``."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _intersect(a, b):
    out = []
    for sa, sb in zip(a, b):
        start, stop = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if stop <= start:
            return None
        out.append(slice(start, stop))
    return tuple(out)
