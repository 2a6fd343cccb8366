"""Bringing images onto the model's grid and intensity scale, and results back.

Training and inference call the same functions, so the network sees at inference exactly the kind
of input it was trained on: an axis-aligned (identity-direction, LPS) grid at the model's spacing,
whatever the scanner's orientation, with intensities normalised per modality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from .errors import InputImageError
from .imageio import VolumeImage, to_sitk

__all__ = [
    "IntensityNormalisation",
    "DEFAULT_NORMALISATION",
    "check_direction",
    "check_image_values",
    "normalise_intensity",
    "resample_to_spacing",
    "resample_onto",
    "resample_linear",
    "resample_mask_above",
]


@dataclass(frozen=True)
class IntensityNormalisation:
    """How one modality's intensities become network input.

    ``window``: clip to [low, high] then ``(x - centre) / scale``; right for calibrated units
    (CT Hounsfield units, PET SUV). ``zscore``: clip to the [low, high] percentiles of the non-zero
    voxels, then subtract their mean and divide by their standard deviation; right for MRI and
    ultrasound, whose units differ between scanners.
    """

    mode: Literal["window", "zscore"]
    low: float
    high: float
    centre: float = 0.0
    scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_NORMALISATION: dict[str, IntensityNormalisation] = {
    "CT": IntensityNormalisation("window", -1000.0, 1000.0, centre=0.0, scale=400.0),
    "PET": IntensityNormalisation("window", 0.0, 20.0, centre=2.0, scale=3.0),
    "MRI": IntensityNormalisation("zscore", 0.5, 99.5),
    "US": IntensityNormalisation("zscore", 0.5, 99.5),
}


def check_image_values(image: VolumeImage, name: str = "input image") -> None:
    """Refuse what no model can segment, with a message that says what is wrong."""
    array = image.array
    if array.size == 0:
        raise InputImageError(f"{name} is empty (shape {array.shape})")
    if array.ndim != 3:
        raise InputImageError(f"{name} has {array.ndim} dimensions; a 3D volume is needed")
    if min(array.shape) < 2:
        raise InputImageError(f"{name} is a single slice {array.shape[::-1]}; a 3D volume is needed")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - finite.sum())
            raise InputImageError(
                f"{name} has {bad} NaN or infinite voxel(s); fix or mask them before segmenting"
            )
    if array.min() == array.max():
        raise InputImageError(f"{name} is constant (every voxel is {array.flat[0]}); nothing to segment")
    if not all(s > 0 for s in image.spacing):
        raise InputImageError(f"{name} has a non-positive spacing {image.spacing}")
    check_direction(image.direction, name)


def check_direction(direction: np.ndarray, name: str = "input image") -> None:
    """Refuse axes that are not perpendicular unit vectors.

    A sheared grid (a CT acquired with gantry tilt, or a volume under a hardened shear) can be read,
    but the segmentation written back on it would carry the shear into Slicer, where segmentations
    are drawn on perpendicular axes; refusing with the fix is safer than a subtly displaced result.
    """
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    lengths = np.linalg.norm(direction, axis=0)
    if not np.all(np.isfinite(direction)) or np.any(lengths < 1e-6) or abs(np.linalg.det(direction)) < 1e-6:
        raise InputImageError(f"{name} has a degenerate direction matrix {direction.tolist()}")
    if np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        return
    if not np.allclose(lengths, 1.0, atol=1e-3):
        raise InputImageError(
            f"{name} has a direction matrix whose axes are not unit vectors (lengths {np.round(lengths, 4).tolist()}); "
            "put the voxel size in the spacing and keep only directions in the matrix"
        )
    unit = direction / lengths
    cosines = np.clip(np.abs((unit.T @ unit)[np.triu_indices(3, 1)]), 0.0, 1.0)
    shear = float(np.degrees(np.arcsin(cosines.max())))
    raise InputImageError(
        f"{name} has axes that are not perpendicular (sheared by {shear:.1f} degrees, as after a CT "
        "gantry tilt); resample it onto a regular grid first (in Slicer: Resample Scalar Volume, "
        "or harden the transform and resample)"
    )


def normalise_intensity(array: np.ndarray, settings: IntensityNormalisation) -> np.ndarray:
    """Network input as float32, per the modality's rule."""
    array = array.astype(np.float32, copy=False)
    if settings.mode == "window":
        return (np.clip(array, settings.low, settings.high) - settings.centre) / settings.scale
    # Statistics over the non-zero voxels: air around an MRI head or outside an ultrasound fan
    # would otherwise set the scale.
    foreground = array[array != 0]
    if foreground.size < 16:
        foreground = array.ravel()
    low, high = np.percentile(foreground, [settings.low, settings.high])
    clipped_foreground = np.clip(foreground, low, high)
    mean, std = float(clipped_foreground.mean()), float(clipped_foreground.std())
    return ((np.clip(array, low, high) - mean) / max(std, 1e-6)).astype(np.float32, copy=False)


def canonical_grid(image: VolumeImage, spacing: tuple[float, float, float]) -> VolumeImage:
    """An identity-direction grid at ``spacing`` that covers ``image``'s voxels (an empty array)."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (-0.5, image.shape_ijk[0] - 0.5)
         for j in (-0.5, image.shape_ijk[1] - 0.5)
         for k in (-0.5, image.shape_ijk[2] - 0.5)]
    )
    world = (image.ijk_to_lps @ corners.T).T[:, :3]
    low, high = world.min(0), world.max(0)
    spacing_arr = np.asarray(spacing, dtype=float)
    size = np.maximum(np.ceil((high - low) / spacing_arr - 1e-6).astype(int), 1)
    origin = low + spacing_arr / 2
    return VolumeImage(
        array=np.zeros(size[::-1], dtype=np.uint8), spacing=tuple(spacing_arr), origin=tuple(origin)
    )


_SITK_NATIVE = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)}


def resample_onto(
    source: VolumeImage,
    target: VolumeImage,
    interpolation: Literal["linear", "nearest", "bspline"] = "linear",
    fill: float | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """``source`` resampled onto ``target``'s voxels (``target.array`` is only read for its shape)."""
    import SimpleITK as sitk

    interpolators = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }
    array = source.array
    if array.dtype not in _SITK_NATIVE:  # bool and exotic types; others are read as they are (no float copy)
        array = array.astype(np.float32)
    src = to_sitk(source.with_array(array))
    reference = to_sitk(target.with_array(np.zeros(target.array.shape, dtype=np.uint8)))
    default = float(source.array.min()) if fill is None else float(fill)
    out = sitk.Resample(src, reference, sitk.Transform(), interpolators[interpolation], default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).astype(dtype, copy=False)


def resample_mask_above(source: VolumeImage, target: VolumeImage, threshold: float, block: int = 8
                        ) -> tuple[np.ndarray, float | None, tuple[slice, slice, slice]]:
    """``resample_onto(source, target, "linear", 0) >= threshold``, computed only where it can be true.

    Returns the mask inside its tight box, the mean resampled value inside the mask (None for an
    empty mask), and the box (``[k, j, i]`` slices of the target; empty slices for an empty mask):
    a structure then costs memory and time in proportion to where it is, not to the whole target.

    Linear interpolation is a convex combination of the 2x2x2 source voxels around a point, so a
    target voxel can reach ``threshold`` only if one of those source voxels does. The source is cut
    into blocks of ``block``^3 voxels; for each block holding voxels at or above the threshold,
    only the target voxels whose source position lies within those voxels' box grown by one voxel
    are resampled, from the source cropped around it. Every target voxel that reaches the threshold
    lies in such a footprint and is computed from the same 2x2x2 voxels as a full resampling would,
    so the mask is identical to the full one; a structure costs the voxels near it, not its bounding
    box (a scattered false positive far from an organ no longer makes the box span the CT). When the
    blocks fill more than half of the voxels' box, one call over that box is cheaper.
    """
    from .imageio import mask_box

    empty = (np.zeros((0, 0, 0), dtype=bool), None, (slice(0, 0),) * 3)
    above = source.array >= threshold
    if not above.any():
        return empty
    footprints = _footprints(above, source, target, block)
    if not footprints:
        return empty
    region_low = np.min([f.start for f in footprints], axis=0)
    region_high = np.max([f.stop for f in footprints], axis=0)
    out = np.zeros(tuple((region_high - region_low)[::-1]), dtype=bool)
    target_to_source = np.linalg.inv(source.ijk_to_lps) @ target.ijk_to_lps
    total, count = 0.0, 0
    for footprint in footprints:
        crop = tuple(slice(a, b) for a, b in zip(footprint.crop_low[::-1], footprint.crop_high[::-1]))
        crop_origin = source.ijk_to_lps @ np.array([*footprint.crop_low, 1.0])
        piece = VolumeImage(source.array[crop], source.spacing, tuple(crop_origin[:3]), source.direction)
        origin = target.ijk_to_lps @ np.array([*footprint.start, 1.0])
        shape = tuple((footprint.stop - footprint.start)[::-1])
        box = VolumeImage(np.zeros(shape, np.uint8), target.spacing, tuple(origin[:3]), target.direction)
        values = resample_linear(piece, box)
        inside = values >= threshold
        if not inside.any():
            continue
        if footprint.owned is not None:
            inside &= _owned(values.shape, footprint.start, target_to_source, *footprint.owned)
        region = tuple(slice(a, b) for a, b in zip((footprint.start - region_low)[::-1], (footprint.stop - region_low)[::-1]))
        new = inside & ~out[region]  # a voxel two footprints share has one value: count it once
        total += float(values[new].sum(dtype=np.float64))
        count += int(new.sum())
        out[region] |= inside
    tight = mask_box(out)
    if tight is None:
        return empty
    box = tuple(slice(low + t.start, low + t.stop) for t, low in zip(tight, region_low[::-1]))
    return out[tight].copy(), total / count, box  # contiguous, and the footprints' larger region goes


@dataclass(frozen=True)
class _Footprint:
    """Target voxels ``[start, stop)`` (i, j, k) that one block's voxels can reach, the source crop
    ``[crop_low, crop_high)`` (i, j, k) they are computed from, and, when several blocks share the
    work, the source box ``(low, high)`` whose target voxels this block owns."""

    start: np.ndarray
    stop: np.ndarray
    crop_low: np.ndarray
    crop_high: np.ndarray
    owned: tuple[np.ndarray, np.ndarray] | None


def _footprints(above: np.ndarray, source: VolumeImage, target: VolumeImage, block: int) -> list[_Footprint]:
    size_ijk = np.array(source.shape_ijk)
    target_shape = np.array(target.shape_ijk)
    source_to_target = np.linalg.inv(target.ijk_to_lps) @ source.ijk_to_lps
    blocks = _active_blocks(above, block)
    first_all, last_all = _bounding_box(above)
    whole = len(blocks) * block**3 > 0.5 * np.prod(last_all - first_all + 1)
    if whole:  # the voxels fill their box: one resampling call over it beats many small ones
        block = int(max(above.shape))
        blocks = np.zeros((1, 3), dtype=int)
    footprints = []
    for block_kji in blocks:
        corner = block_kji * block
        part = above[tuple(slice(c, c + block) for c in corner)]
        tight_first, tight_last = _bounding_box(part)  # the block's voxels at or above the threshold
        first = (corner + tight_first.astype(int))[::-1]  # (i, j, k)
        last = (corner + tight_last.astype(int))[::-1]
        low = first - 1.0  # grown by one voxel: where those voxels' interpolation reaches
        high = last + 1.0
        corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
        in_target = corners @ source_to_target.T
        start = np.clip(np.floor(in_target[:, :3].min(0)).astype(int) - 1, 0, target_shape)
        stop = np.clip(np.ceil(in_target[:, :3].max(0)).astype(int) + 2, 0, target_shape)
        if np.any(stop <= start):
            continue
        if whole:  # one call: every footprint voxel is computed from the whole source, none needs owning
            footprints.append(_Footprint(start, stop, np.zeros(3, dtype=int), size_ijk, None))
        else:  # a voxel beyond the reach: every owned point's neighbours are inside
            footprints.append(_Footprint(start, stop, np.maximum(first - 2, 0), np.minimum(last + 3, size_ijk), (low, high)))
    return footprints


def resample_linear(source: VolumeImage, target: VolumeImage) -> np.ndarray:
    """``resample_onto(source, target, "linear", 0.0)``, as three one-dimensional passes when each
    target axis runs along one source axis (any flips, permutations and spacings: the engine's grid
    and every axis-aligned scan); SimpleITK otherwise.

    Linear interpolation is separable, so the passes give what ITK's interpolator computes, in its
    order (i, then j, then k), with its rules: a point outside the source's voxels' extent takes the
    fill, one within half a voxel of the edge takes the edge voxel's value. Each pass costs what it
    writes, so resampling a coarse probability map onto a fine CT costs about the output's size once.
    """
    to_source = np.linalg.inv(source.ijk_to_lps) @ target.ijk_to_lps  # target (i, j, k, 1) -> source
    linear = to_source[:3, :3]
    runs_along = np.abs(linear) > 1e-9 * np.abs(linear).max()
    if not (np.all(runs_along.sum(axis=0) == 1) and np.all(runs_along.sum(axis=1) == 1)):
        return resample_onto(source, target, "linear", 0.0)
    target_axis = runs_along.argmax(axis=1)  # source axis (i, j, k) -> the target axis it runs along
    values = source.array.astype(np.float64)
    for axis in range(3):  # i, j, k: array axes 2, 1, 0; the last pass, the largest, writes float32
        along = target_axis[axis]
        positions = linear[axis, along] * np.arange(target.shape_ijk[along]) + to_source[axis, 3]
        values = _interpolate_along(values, 2 - axis, positions, np.float32 if axis == 2 else np.float64)
    source_axis = np.argsort(target_axis)  # target axis -> source axis
    order = [2 - source_axis[2 - array_axis] for array_axis in range(3)]
    return np.ascontiguousarray(values.transpose(order))


def _interpolate_along(values: np.ndarray, axis: int, positions: np.ndarray, dtype: type,
                       chunk_voxels: int = 1 << 20) -> np.ndarray:
    """``values`` linearly interpolated at continuous ``positions`` along ``axis``, 0 outside.

    Computed in float64 (as ITK does) slab by slab across another axis, so the temporaries stay in
    the cache and only the result, in ``dtype``, has the output's size.
    """
    n = values.shape[axis]
    inside = (positions >= -0.5) & (positions < n - 0.5)
    clamped = np.clip(positions, 0, n - 1)
    low = np.floor(clamped).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    shape = [1, 1, 1]
    shape[axis] = len(positions)
    weight = (clamped - low).reshape(shape)
    inside = inside.reshape(shape).astype(np.float64)
    out_shape = list(values.shape)
    out_shape[axis] = len(positions)
    result = np.empty(out_shape, dtype=dtype)
    across = 1 if axis == 0 else 0
    step = max(1, chunk_voxels // max(1, int(np.prod(out_shape)) // out_shape[across]))
    for start in range(0, out_shape[across], step):
        slab = [slice(None)] * 3
        slab[across] = slice(start, start + step)
        part = values[tuple(slab)]
        first = np.take(part, low, axis=axis)
        interpolated = np.take(part, high, axis=axis)
        interpolated -= first
        interpolated *= weight
        interpolated += first
        interpolated *= inside
        result[tuple(slab)] = interpolated
    return result


def _active_blocks(above: np.ndarray, block: int) -> np.ndarray:
    """The ``(k, j, i)`` block indices of the ``block``^3 blocks holding any True voxel."""
    active = above
    for axis in range(3):
        active = np.logical_or.reduceat(active, np.arange(0, above.shape[axis], block), axis=axis)
    return np.argwhere(active)


def _owned(shape_kji: tuple[int, int, int], start_ijk: np.ndarray, target_to_source: np.ndarray,
           low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Which voxels of a target box have their source position within ``[low, high]`` (i, j, k)."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape_kji), indexing="ij", sparse=True)
    owned = np.ones(shape_kji, dtype=bool)
    for axis in range(3):
        row = target_to_source[axis]
        position = (row[0] * (i + start_ijk[0]) + row[1] * (j + start_ijk[1]) + row[2] * (k + start_ijk[2]) + row[3])
        owned &= (position >= low[axis] - 1e-6) & (position <= high[axis] + 1e-6)
    return owned


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last (k, j, i) index of a non-empty mask's voxels, from per-axis projections:
    listing the voxels themselves would take memory in proportion to a large structure."""
    first, last = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        first.append(hits[0])
        last.append(hits[-1])
    return np.array(first, dtype=float), np.array(last, dtype=float)


def resample_to_spacing(
    image: VolumeImage,
    spacing: tuple[float, float, float],
    interpolation: Literal["linear", "nearest", "bspline"] = "linear",
    fill: float | None = None,
) -> VolumeImage:
    """The image on the canonical grid at ``spacing`` (identity direction, covering the input)."""
    grid = canonical_grid(image, spacing)
    return grid.with_array(resample_onto(image, grid, interpolation, fill))


def resample_mask_to_spacing(mask: np.ndarray, geometry: VolumeImage, spacing: tuple[float, float, float]) -> np.ndarray:
    """A binary mask on the canonical grid: linear interpolation of the 0/1 mask, cut at one half.

    Smoother than nearest-neighbour at coarse spacings, so thin structures keep their shape.
    """
    grid = canonical_grid(geometry, spacing)
    return resample_onto(geometry.with_array(mask.astype(np.float32)), grid, "linear", 0.0) >= 0.5
