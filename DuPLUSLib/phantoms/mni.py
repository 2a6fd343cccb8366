"""The one real brain on this machine: the MNI152 2009 template that nilearn ships in its wheel.

It gives the segmentation model real cortical folding, real grey/white contrast and real proportions
to learn from beside the procedural phantoms. Labels: ``brain`` (nilearn's brain mask), and
``grey_matter`` / ``white_matter`` from nilearn's GM and WM masks, which overlap (they are
thresholded and dilated probability maps): a voxel claimed by both goes to the tissue with the higher
template probability, and both are kept inside the brain, so the two are disjoint.

Augmentation (``seed`` given) re-images it the way different scanners and sites would: a random
acquisition plane (axial, RAS-flipped, coronal, sagittal, feet-first) with a small tilt, a random,
possibly anisotropic spacing around ``resolution_mm``, a random smooth deformation of the head, a
multiplicative bias field, Rician noise and an arbitrary intensity gain. Deterministic per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..imageio import VolumeImage
from .geometry import Acquisition, make_acquisition, random_direction, random_warp
from .intensity import smooth_bias_field
from .phantom import Phantom, case_rngs

__all__ = ["mni152_case", "MNITemplate", "load_template"]

#: RAS (NIfTI) to LPS (ours): negate x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class MNITemplate:
    """The 1 mm template and its exclusive label maps, with the voxel -> LPS affine."""

    t1: np.ndarray  # float32 [x, y, z] in NIfTI voxel order, 0-1
    brain: np.ndarray  # bool [x, y, z]
    grey_matter: np.ndarray
    white_matter: np.ndarray
    ijk_to_lps: np.ndarray  # 4x4, NIfTI voxel (x, y, z) -> LPS mm


@lru_cache(maxsize=1)
def load_template() -> MNITemplate:
    """Load the template and masks from nilearn's package data (no download, cached per process)."""
    from nilearn import datasets

    t1_image = datasets.load_mni152_template(resolution=1)
    affine = np.asarray(t1_image.affine, dtype=float)
    t1 = np.asarray(t1_image.dataobj, dtype=np.float32)

    def on_grid(image) -> np.ndarray:
        if image.shape != t1.shape or not np.allclose(image.affine, affine):
            raise RuntimeError("nilearn's MNI152 masks are not on the template grid; cannot label the case")
        return np.asarray(image.dataobj, dtype=np.float32)

    brain = on_grid(datasets.load_mni152_brain_mask(resolution=1)) > 0.5
    gm_mask = on_grid(datasets.load_mni152_gm_mask(resolution=1)) > 0.5
    wm_mask = on_grid(datasets.load_mni152_wm_mask(resolution=1)) > 0.5
    gm_probability = on_grid(datasets.load_mni152_gm_template(resolution=1))
    wm_probability = on_grid(datasets.load_mni152_wm_template(resolution=1))
    prefer_grey = gm_probability >= wm_probability
    grey = brain & gm_mask & (prefer_grey | ~wm_mask)
    white = brain & wm_mask & ~grey
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :] = _RAS_TO_LPS @ affine[:3, :]
    return MNITemplate(t1, brain, grey, white, ijk_to_lps)


def mni152_case(seed: int | None = None, augment: bool = True, resolution_mm: float = 2) -> Phantom:
    """The MNI152 brain as a :class:`Phantom` (modality "MRI", region "brain").

    ``seed=None`` or ``augment=False``: the template resampled to ``resolution_mm`` in its own
    orientation, with no deformation or noise. Otherwise a re-imaged, deformed, degraded copy,
    identical for the same seed.
    """
    template = load_template()
    augmented = augment and seed is not None
    if augmented:
        grid_rng, warp_rng, imaging_rng = case_rngs("MRI", "mni152", int(seed), streams=3)
        acquisition = _random_acquisition(template, grid_rng, resolution_mm)
        # Keep the head's size (volume within ~10 %): turn and bend it, barely stretch it.
        warp = random_warp(warp_rng, scaling=0.03, rotation_degrees=8.0, bend_mm=(1.0, 3.0))
        warp = type(warp)(warp.matrix, acquisition_center(template), warp.waves)
    else:
        acquisition = _template_acquisition(template, resolution_mm)
        warp = None
    t1, brain, grey, white = _sample(template, acquisition, warp)
    if augmented:
        t1 = _degrade(t1, acquisition, imaging_rng)
    else:
        t1 = t1 * np.float32(1000.0)
    image = VolumeImage(
        array=t1.astype(np.float32),
        spacing=acquisition.spacing,
        origin=tuple(acquisition.origin),
        direction=acquisition.direction,
        metadata={"DuPLUS.Phantom": f"MRI/brain/mni152/{seed}", "DuPLUS.Protocol": "t1"},
    )
    labels = {"brain": brain, "grey_matter": grey, "white_matter": white}
    return Phantom(image, labels, "MRI", "brain", seed, body=brain.copy(), protocol="t1",
                   notes={"source": "MNI152 2009 (nilearn)", "plane": acquisition.plane, "augmented": augmented})


def acquisition_center(template: MNITemplate) -> np.ndarray:
    """The brain's centre in LPS mm (the warp turns and stretches the head about it)."""
    ijk = np.argwhere(template.brain).mean(axis=0)
    return template.ijk_to_lps[:3, :3] @ ijk + template.ijk_to_lps[:3, 3]


def _brain_box(template: MNITemplate, margin: float) -> tuple[np.ndarray, np.ndarray]:
    ijk = np.argwhere(template.brain)
    corners = np.array([ijk.min(axis=0), ijk.max(axis=0)], dtype=float)
    world = corners @ template.ijk_to_lps[:3, :3].T + template.ijk_to_lps[:3, 3]
    return world.min(axis=0) - margin, world.max(axis=0) + margin


def _template_acquisition(template: MNITemplate, resolution_mm: float) -> Acquisition:
    low, high = _brain_box(template, margin=12.0)
    direction = template.ijk_to_lps[:3, :3] / np.linalg.norm(template.ijk_to_lps[:3, :3], axis=0)
    return make_acquisition((low + high) / 2, high - low, (resolution_mm,) * 3, direction, "template")


def _random_acquisition(template: MNITemplate, rng: np.random.Generator, resolution_mm: float) -> Acquisition:
    planes = {"axial": 0.3, "axial_ras": 0.2, "axial_inferior": 0.1, "coronal": 0.2, "sagittal": 0.2}
    plane, direction = random_direction(rng, planes, tilt_degrees=12.0)
    spacing = tuple(resolution_mm * rng.uniform(0.85, 1.3, size=3))
    if rng.random() < 0.3:  # a thick-slice 2D protocol
        spacing = (spacing[0], spacing[1], resolution_mm * rng.uniform(1.5, 2.5))
    low, high = _brain_box(template, margin=15.0)
    center = (low + high) / 2 + rng.uniform(-8, 8, size=3)
    size = (high - low) * rng.uniform(1.0, 1.15, size=3)
    return make_acquisition(center, size, spacing, direction, plane)


def _sample(template: MNITemplate, acquisition: Acquisition, warp):
    """Resample image and labels at every voxel of ``acquisition`` (through ``warp`` if given).

    Labels are interpolated as fractions and thresholded at one half, so their volumes survive
    resampling; grey and white matter then stay disjoint by taking the larger fraction.
    """
    if warp is None:
        x, y, z = acquisition.world_axes()
    else:
        x, y, z = warp.canonical_grid(acquisition)
    to_index = np.linalg.inv(template.ijk_to_lps)
    coordinates = np.stack([to_index[a, 0] * x + to_index[a, 1] * y + to_index[a, 2] * z + to_index[a, 3] for a in range(3)])
    del x, y, z

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, coordinates, order=1, mode="constant", cval=0.0, prefilter=False)

    t1 = sample(template.t1)
    brain = sample(template.brain.astype(np.float32)) >= 0.5
    grey_fraction = sample(template.grey_matter.astype(np.float32))
    white_fraction = sample(template.white_matter.astype(np.float32))
    grey = brain & (grey_fraction >= 0.5) & (grey_fraction >= white_fraction)
    white = brain & (white_fraction >= 0.5) & ~grey
    return t1, brain, grey, white


def _degrade(t1: np.ndarray, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Bias field, Rician noise and a scanner gain, as in :class:`~.intensity.MRIModel`."""
    signal = t1 * np.float32(1000.0) * smooth_bias_field(rng, acquisition.shape_kji, float(rng.uniform(0.1, 0.3)))
    sigma = np.float32(rng.uniform(8.0, 30.0))
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    imaginary = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    return np.sqrt(real * real + imaginary * imaginary) * np.float32(rng.uniform(0.5, 2.0))
