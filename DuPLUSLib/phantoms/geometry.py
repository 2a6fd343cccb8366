"""Where a phantom lies: the per-case body deformation and the scanner's voxel grid.

Two maps keep anatomy and imaging apart. :class:`Warp` takes scanner (world, LPS mm) points to the
canonical anatomy, so each case is the same body randomly stretched, turned and bent.
:class:`Acquisition` is the voxel grid a scanner writes (spacing, direction, origin); it may be flipped,
permuted or tilted like real files are, while the anatomy stays put in the patient frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import rotation_matrix

__all__ = ["Warp", "Acquisition", "random_warp", "random_direction", "make_acquisition"]


@dataclass(frozen=True)
class Warp:
    """World -> canonical: ``q = matrix @ (X - translation)``, ``p = q + sum_m a_m sin(k_m . q + phase_m)``.

    The displacement is a few smooth plane waves (wavelengths 8-25 cm), bounded by
    ``max_displacement`` mm, so organs bend gently and their bounding boxes stay predictable.
    """

    matrix: np.ndarray  # 3x3, world offset -> canonical
    translation: np.ndarray  # world position of the canonical origin
    waves: tuple[tuple[np.ndarray, float, np.ndarray], ...]  # (wave vector rad/mm, phase, amplitude xyz)

    @property
    def max_displacement(self) -> float:
        return float(sum(np.abs(a).max() for _, _, a in self.waves)) if self.waves else 0.0

    def canonical_grid(self, acquisition: "Acquisition"):
        """Canonical coordinates of every voxel centre as three ``[k, j, i]`` float32 arrays.

        World -> canonical before the bend is affine in (i, j, k), and so is each wave's phase, so
        both are built from three short vectors by broadcasting instead of full-volume matrix products.
        """
        steps = self.matrix @ (acquisition.direction * np.asarray(acquisition.spacing)[None, :])
        start = self.matrix @ (np.asarray(acquisition.origin) - self.translation)
        ni, nj, nk = acquisition.shape_ijk
        axes = (np.arange(ni, dtype=np.float32)[None, None, :], np.arange(nj, dtype=np.float32)[None, :, None],
                np.arange(nk, dtype=np.float32)[:, None, None])

        def affine(offset: float, per_axis: np.ndarray) -> np.ndarray:
            # Sum the two smallest broadcasts first so only one full-size temporary is made.
            return (np.float32(per_axis[0]) * axes[0] + np.float32(per_axis[1]) * axes[1]) + \
                (np.float32(per_axis[2]) * axes[2] + np.float32(offset))

        q = tuple(affine(start[a], steps[a]) for a in range(3))
        return self._displace(q, lambda k, phase: affine(k @ start + phase, k @ steps))

    def _displace(self, q, phase_of):
        x, y, z = (np.array(c, dtype=np.float32, copy=True) for c in q)
        for k, phase, amplitude in self.waves:
            s = np.sin(phase_of(np.asarray(k), phase)).astype(np.float32, copy=False)
            x += np.float32(amplitude[0]) * s
            y += np.float32(amplitude[1]) * s
            z += np.float32(amplitude[2]) * s
        return x, y, z

    def world_box(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A world box sure to hold every point that maps into the canonical box [low, high]."""
        pad = self.max_displacement + 1.0
        corners = np.array([[a, b, c] for a in (low[0] - pad, high[0] + pad) for b in (low[1] - pad, high[1] + pad)
                            for c in (low[2] - pad, high[2] + pad)])
        world = corners @ np.linalg.inv(self.matrix).T + self.translation
        return world.min(axis=0), world.max(axis=0)

    def to_world(self, p: np.ndarray) -> np.ndarray:
        """Approximate inverse (ignores the small displacement): where canonical ``p`` lands."""
        return np.linalg.inv(self.matrix) @ np.asarray(p, dtype=float) + self.translation


def random_warp(
    rng: np.random.Generator,
    scaling: float = 0.1,
    rotation_degrees: float = 6.0,
    bend_mm: tuple[float, float] = (1.5, 4.0),
) -> Warp:
    """A per-case body: anisotropic scaling (+-``scaling``), small rotations, a smooth bend of a few mm."""
    scale_matrix = np.diag(rng.uniform(1 - scaling, 1 + scaling, size=3))
    rotation = rotation_matrix(rng.uniform(-rotation_degrees, rotation_degrees, size=3))
    matrix = np.linalg.inv(rotation @ scale_matrix)
    translation = np.array([rng.uniform(-30, 30), rng.uniform(-40, 40), rng.uniform(-300, 300)])
    waves = []
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * 2 * np.pi / rng.uniform(80, 250)
        amplitude = rng.normal(size=3)
        amplitude *= rng.uniform(*bend_mm) / np.linalg.norm(amplitude)
        waves.append((k, float(rng.uniform(0, 2 * np.pi)), amplitude))
    return Warp(matrix, translation, tuple(waves))


# Acquisition planes, as the columns (i, j, k) of the direction matrix in LPS.
_PLANES = {
    "axial": np.eye(3),  # i -> L, j -> P, k -> S: the DICOM axial default
    "axial_ras": np.diag([-1.0, -1.0, 1.0]),  # i -> R, j -> A: as written by RAS-minded tools
    "axial_inferior": np.diag([1.0, 1.0, -1.0]),  # slices stored head to foot
    "coronal": np.column_stack([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),  # i -> L, j -> I, k -> P
    "sagittal": np.column_stack([[0, 1.0, 0], [0, 0, -1.0], [1.0, 0, 0]]),  # i -> P, j -> I, k -> L
}


def random_direction(rng: np.random.Generator, planes: dict[str, float], tilt_degrees: float) -> tuple[str, np.ndarray]:
    """Pick an acquisition plane (by weight) and tilt it by up to ``tilt_degrees`` about each axis."""
    names = list(planes)
    weights = np.array([planes[n] for n in names], dtype=float)
    name = names[rng.choice(len(names), p=weights / weights.sum())]
    tilt = rotation_matrix(rng.uniform(-tilt_degrees, tilt_degrees, size=3)) if tilt_degrees > 0 else np.eye(3)
    return name, tilt @ _PLANES[name]


@dataclass(frozen=True)
class Acquisition:
    """A voxel grid in world LPS: ``X = origin + direction @ (spacing * ijk)``."""

    shape_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    plane: str = "axial"

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return self.shape_ijk[::-1]

    @property
    def voxel_size(self) -> float:
        """The edge of a cube of the same volume: the width of a partial-volume ramp."""
        return float(np.prod(self.spacing) ** (1 / 3))

    def world_axes(self):
        """World coordinates of every voxel centre as three ``[k, j, i]`` float32 arrays."""
        ni, nj, nk = self.shape_ijk
        steps = self.direction * np.asarray(self.spacing)[None, :]  # columns: world step per i, j, k
        i = np.arange(ni, dtype=np.float32)[None, None, :]
        j = np.arange(nj, dtype=np.float32)[None, :, None]
        k = np.arange(nk, dtype=np.float32)[:, None, None]
        return tuple(
            (np.float32(self.origin[a]) + np.float32(steps[a, 0]) * i + np.float32(steps[a, 1]) * j
             + np.float32(steps[a, 2]) * k).astype(np.float32)
            for a in range(3)
        )

    def index_box(self, world_low: np.ndarray, world_high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """The ``[k, j, i]`` slices of voxels inside a world box, or None if it misses the grid."""
        corners = np.array([[a, b, c] for a in (world_low[0], world_high[0]) for b in (world_low[1], world_high[1])
                            for c in (world_low[2], world_high[2])])
        to_index = np.linalg.inv(self.direction * np.asarray(self.spacing)[None, :])
        ijk = (corners - self.origin) @ to_index.T
        low = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - 1, 0)
        high = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 2, np.asarray(self.shape_ijk))
        if np.any(high <= low):
            return None
        return slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0])


def make_acquisition(
    center_world: np.ndarray,
    size_mm: np.ndarray,
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    plane: str = "axial",
    max_voxels: int = 256 * 256 * 128,
) -> Acquisition:
    """The grid covering a world box of ``size_mm`` (patient x, y, z) centred on ``center_world``.

    ``spacing`` is per voxel axis. If the grid would exceed ``max_voxels`` the spacing is coarsened
    evenly, so an odd request never produces a volume too big to generate quickly.
    """
    spacing_arr = np.asarray(spacing, dtype=float)
    extent = np.abs(direction.T) @ np.asarray(size_mm, dtype=float)  # mm along i, j, k
    shape = np.maximum(np.round(extent / spacing_arr).astype(int), 2)
    count = float(np.prod(shape))
    if count > max_voxels:
        spacing_arr = spacing_arr * (count / max_voxels) ** (1 / 3)
        shape = np.maximum(np.round(extent / spacing_arr).astype(int), 2)
    origin = np.asarray(center_world, dtype=float) - direction @ (spacing_arr * (shape - 1) / 2.0)
    return Acquisition(tuple(int(s) for s in shape), tuple(float(s) for s in spacing_arr), origin, direction, plane)
