"""Random geometry for synthesis: smooth deformation, scaling, organ size changes, field-of-view crops.

Everything acts on the label map alone (nearest-neighbour), before any intensity exists, so the
image painted afterwards and its masks line up by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from ..imageio import VolumeImage

__all__ = ["SpatialSettings", "deform_labels", "grow_or_shrink_labels", "resize_organs", "crop_field_of_view", "crop_in_plane"]


@dataclass(frozen=True)
class SpatialSettings:
    scale: float = 0.12  # relative, per axis
    rotation_degrees: float = 10.0
    displacement_mm: float = 8.0  # amplitude of the smooth non-linear deformation
    control_spacing_mm: float = 60.0  # spacing of its control points
    organ_resize_probability: float = 0.3  # per annotated label: grow or shrink by a voxel
    organ_resize_mm_probability: float = 0.5  # with organ_resizes on: per annotated label, grow or shrink by millimetres
    organ_resize_mm: tuple[float, float] = (3.0, 9.0)  # by how much (at least a voxel of the real CT)
    slab_probability: float = 0.25  # a thin slab instead of the whole scan
    slab_mm: tuple[float, float] = (40.0, 100.0)
    partial_probability: float = 0.5  # otherwise, keep a random 50-100 % of the scan's length
    in_plane_probability: float = 0.4  # with in-plane crops on: a reconstruction field of view that cuts the body
    in_plane_mm: tuple[float, float] = (160.0, 360.0)  # its width along each in-plane axis

    def stronger(self) -> SpatialSettings:
        """Wider deformations, for anatomies further from the one labelled patient: SynthSeg's ranges
        of scaling and rotation (Billot et al. 2023: +-20 %, +-15 degrees) and a smooth warp of 12 mm
        instead of 8 mm."""
        return replace(self, scale=0.2, rotation_degrees=15.0, displacement_mm=12.0)


def deform_labels(labels: VolumeImage, rng: np.random.Generator, settings: SpatialSettings, fill: int) -> VolumeImage:
    """The label map under a random affine (about the centre) and smooth displacement field."""
    shape = np.array(labels.array.shape)  # k, j, i
    spacing = np.array(labels.spacing)[::-1]  # mm per k, j, i
    centre = (shape - 1) / 2
    angles = np.radians(rng.uniform(-settings.rotation_degrees, settings.rotation_degrees, 3))
    rotation = _rotation(angles)
    scales = 1 + rng.uniform(-settings.scale, settings.scale, 3)
    # output voxel (mm about the centre) -> input mm: x_in = R S^-1 x_out
    matrix_mm = rotation @ np.diag(1 / scales)
    matrix = np.diag(1 / spacing) @ matrix_mm @ np.diag(spacing)
    offset = centre - matrix @ centre
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coordinates = (matrix @ grid) + offset[:, None]
    coordinates = coordinates.reshape(3, *shape)
    coordinates += _smooth_displacement(shape, spacing, rng, settings)
    out = ndimage.map_coordinates(labels.array, coordinates, order=0, mode="constant", cval=fill)
    return labels.with_array(out.astype(labels.array.dtype))


def _rotation(angles: np.ndarray) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _smooth_displacement(shape, spacing, rng: np.random.Generator, settings: SpatialSettings) -> np.ndarray:
    """A displacement in voxels, smooth over ``control_spacing_mm``: random vectors on a coarse grid,
    upsampled with cubic splines."""
    extent = shape * spacing
    nodes = np.maximum(np.ceil(extent / settings.control_spacing_mm).astype(int) + 1, 2)
    fields = []
    for axis in range(3):
        coarse = rng.normal(0, settings.displacement_mm / 2, size=tuple(nodes)) / spacing[axis]
        zoom = [s / n for s, n in zip(shape, nodes)]
        fine = ndimage.zoom(coarse, zoom, order=3, mode="nearest")
        fields.append(fine[: shape[0], : shape[1], : shape[2]])
    return np.stack(fields).astype(np.float32)


def grow_or_shrink_labels(
    labels: np.ndarray, annotated: list[int], background: set[int], rng: np.random.Generator, probability: float
) -> np.ndarray:
    """Organ-wise size changes: some annotated labels grow by one voxel into surrounding background
    tissue, others shrink by one voxel and give it to the background tissue around them."""
    out = labels.copy()
    is_background = np.isin(out, list(background))
    for value in annotated:
        if rng.random() >= probability:
            continue
        mask = out == value
        if not mask.any():
            continue
        if rng.random() < 0.5:
            grown = ndimage.binary_dilation(mask) & is_background
            out[grown] = value
            is_background &= ~grown
        else:
            rim = mask & ~ndimage.binary_erosion(mask)
            if rim.sum() >= mask.sum() * 0.6:  # too thin to shrink without vanishing
                continue
            neighbour = ndimage.grey_dilation(np.where(is_background, out, 0), size=3)
            take = rim & (neighbour > 0)
            out[take] = neighbour[take]
    return out


def resize_organs(
    labels: np.ndarray, spacing_kji: np.ndarray, annotated: list[int], background: set[int],
    rng: np.random.Generator, settings: SpatialSettings,
) -> np.ndarray:
    """Organ-wise size changes of several millimetres, organ by organ, as patients differ.

    One voxel of growth or shrinkage (:func:`grow_or_shrink_labels`) is 3 mm on the real CT's grid,
    far less than organs vary between people (a spleen's volume varies several-fold). Here each
    annotated label, with ``organ_resize_mm_probability``, grows into the background tissue within a
    drawn distance of it, or gives the rim of that depth to the nearest background tissue; another
    organ is never overwritten, and a label too thin to lose that rim is left as it is.
    """
    out = labels.copy()
    spacing = np.asarray(spacing_kji, float)
    for value in annotated:
        if rng.random() >= settings.organ_resize_mm_probability:
            continue
        distance_mm = rng.uniform(*settings.organ_resize_mm)
        grow = rng.random() < 0.5
        mask = out == value
        if not mask.any():
            continue
        voxels = np.argwhere(mask)
        margin = np.ceil(distance_mm / spacing).astype(int) + 1
        box = tuple(slice(max(int(lo) - m, 0), int(hi) + m + 1) for lo, hi, m in zip(voxels.min(0), voxels.max(0), margin))
        region, organ = out[box], mask[box]
        is_background = np.isin(region, list(background))
        if grow:
            near = ndimage.distance_transform_edt(~organ, sampling=spacing) <= distance_mm
            region[near & is_background] = value
            continue
        rim = organ & (ndimage.distance_transform_edt(organ, sampling=spacing) <= distance_mm)
        if rim.sum() >= organ.sum() * 0.6 or not is_background.any():
            continue
        nearest = ndimage.distance_transform_edt(~is_background, sampling=spacing, return_distances=False, return_indices=True)
        region[rim] = region[tuple(index[rim] for index in nearest)]
    return out


def crop_field_of_view(
    labels: VolumeImage, focus: np.ndarray, rng: np.random.Generator, settings: SpatialSettings
) -> VolumeImage:
    """A random part of the scan along its slice axis (k), around a point of ``focus``: the whole
    scan, a partial coverage, or a thin slab; the geometry follows the crop."""
    depth = labels.array.shape[0]
    slice_mm = labels.spacing[2]
    draw = rng.random()
    if draw < settings.slab_probability:
        length = int(round(rng.uniform(*settings.slab_mm) / slice_mm))
    elif draw < settings.slab_probability + settings.partial_probability:
        length = int(round(depth * rng.uniform(0.5, 1.0)))
    else:
        return labels
    length = int(np.clip(length, 4, depth))
    hits = np.flatnonzero(focus.any(axis=(1, 2)))
    centre = int(rng.choice(hits)) if hits.size else depth // 2
    start = int(np.clip(centre - length // 2, 0, depth - length))
    return crop(labels, (slice(start, start + length), slice(None), slice(None)))


def crop_in_plane(
    labels: VolumeImage, focus: np.ndarray, rng: np.random.Generator, settings: SpatialSettings
) -> VolumeImage:
    """A smaller in-plane field of view around a point of ``focus``, drawn per axis (i and j).

    Real scans are often reconstructed or acquired over less than the body's width: a cardiac CT
    angiogram at 200-250 mm, an abdominal MRI whose field of view cuts the flanks and arms. The
    body then ends at the image edge, and the sliding window sees air (the volume's minimum)
    beyond it. Slab crops along k never show that; this does.
    """
    if rng.random() >= settings.in_plane_probability:
        return labels
    widths_mm = rng.uniform(*settings.in_plane_mm, size=2)  # along j, then i
    hits = np.flatnonzero(focus)
    shape = labels.array.shape
    centre = np.unravel_index(hits[rng.integers(len(hits))], shape) if hits.size else tuple(n // 2 for n in shape)
    region: list[slice] = [slice(None)]
    for axis, (width_mm, spacing_mm) in enumerate(zip(widths_mm, (labels.spacing[1], labels.spacing[0])), start=1):
        size = shape[axis]
        length = int(np.clip(round(width_mm / spacing_mm), 4, size))
        start = int(np.clip(centre[axis] - length // 2, 0, size - length))
        region.append(slice(start, start + length))
    return crop(labels, tuple(region))  # type: ignore[arg-type]


def crop(image: VolumeImage, region: tuple[slice, slice, slice]) -> VolumeImage:
    """``image[region]`` with its origin moved to the first kept voxel."""
    first = np.array([region[2].start or 0, region[1].start or 0, region[0].start or 0, 1.0])
    origin = (image.ijk_to_lps @ first)[:3]
    return VolumeImage(image.array[region].copy(), image.spacing, tuple(origin), image.direction)
