"""3D ultrasound: a probe on the skin, a fan-shaped field of view, speckle and acoustic shadows.

The image grid is the probe's own box (lateral, depth, elevation), so ultrasound volumes are
naturally oblique in the patient frame. Echoes are formed along the beams: tissue attenuation beyond
what time-gain compensation restores, and strong reflectors (bone, gas) that pass almost nothing on,
leave shadows behind them; interfaces with such reflectors echo brightly. Fully developed speckle is
the magnitude of smoothed complex Gaussian noise (Rayleigh distributed), elongated across the beam
as a real point-spread function is. The log-compressed 0-255 image is zero outside the fan.

Probe placement per region: neonatal cranial (anterior fontanelle, pointing down), thyroid (anterior
neck), echocardiography (apical window), abdomen (anterior wall, right of midline) and pelvis
(suprapubic, angled down behind the pubis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy
from .geometry import Acquisition, Warp
from .intensity import DomainShift, ImagingModel
from .render import Canvas
from .shapes import Shape
from .tissues import TISSUES

__all__ = ["UltrasoundModel", "Probe", "probe_for"]


@dataclass(frozen=True)
class Probe:
    """A curvilinear/phased probe: virtual apex, beam axis, lateral axis (canonical frame), fan size."""

    apex: np.ndarray
    axis: np.ndarray
    lateral: np.ndarray
    near_mm: float  # the fan starts this far from the apex (the probe face)
    depth_mm: float  # imaging depth below the face
    lateral_half_angle: float  # radians
    elevation_half_angle: float


def skin_point(body: Shape, inside: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Where a ray from an inside point leaves the body (1 mm steps)."""
    direction = direction / np.linalg.norm(direction)
    t = np.arange(0.0, 500.0, 1.0)
    points = inside[None, :] + t[:, None] * direction[None, :]
    d = body.sdf(points[:, 0], points[:, 1], points[:, 2])
    outside = np.flatnonzero(d > 0)
    return points[outside[0]] if outside.size else points[-1]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def probe_for(anatomy: Anatomy, rng: np.random.Generator) -> Probe:
    """A probe pose for the region, jittered per case (position +-8 mm, angle +-8 deg)."""
    region = anatomy.region
    scale = float(anatomy.notes.get("neonatal_scale", 1.0))
    if region == "brain":
        target, axis, lateral, depth, angles = (0, 0, 10 * scale), (0, 0.2, -1), (1, 0, 0), 95 * scale, (50, 40)
        near = 8.0
    elif region == "head_neck":
        target, axis, lateral, depth, angles = (0, -20, -112), (0, 1, 0), (1, 0, 0), 55, (38, 22)
        near = 25.0
    elif region == "thorax":
        target, axis, lateral, depth, angles = (30, -25, -45), _unit((-0.55, 0.7, 0.45)), (0.8, 0.6, 0.0), 170, (38, 35)
        near = 10.0
    elif region == "abdomen":
        target, axis, lateral, depth, angles = (-8, 20, 0), (0, 1, 0), (1, 0, 0), 200, (42, 28)
        near = 40.0
    else:  # pelvis: suprapubic, looking down behind the pubis
        target, axis, lateral, depth, angles = (0, -30, 0), _unit((0, 0.9, -0.45)), (1, 0, 0), 150, (40, 30)
        near = 40.0
    axis = _unit(np.asarray(axis) + rng.normal(0, 0.07, 3))
    lateral = _unit(np.asarray(lateral) - np.dot(lateral, axis) * axis)
    target = np.asarray(target, dtype=float) + rng.uniform(-8, 8, 3) * scale
    skin = skin_point(anatomy.body, target, -axis)
    apex = skin - axis * (near - 2.0)  # the face sits 2 mm under the skin surface: gel contact
    depth = float(depth * rng.uniform(0.9, 1.1))
    half = np.radians(np.asarray(angles) * rng.uniform(0.9, 1.05, 2))
    return Probe(apex, axis, lateral, near, depth, float(half[0]), float(half[1]))


class UltrasoundModel(ImagingModel):
    """B-mode, log-compressed to 0-255; zero outside the fan (``field_of_view`` after ``finish``)."""

    modality = "US"
    protocol = "B-mode"

    def __init__(self, rng: np.random.Generator, region: str, shift: DomainShift):
        super().__init__(rng, region, shift)
        self.dynamic_range_db = float(rng.uniform(45, 60))
        self.gain_db = float(rng.uniform(-3, 3))
        self.tgc_db_per_cm = float(rng.uniform(0.8, 1.2))
        self.field_of_view: np.ndarray | None = None
        self._probe: tuple[Probe, float, np.ndarray] | None = None  # probe, voxel size, grid shape

    @property
    def background(self) -> np.ndarray:
        return np.array([0.0, 0.2, 0.0], dtype=np.float32)  # coupling gel: no echo, no loss

    def values(self, tissue: str) -> np.ndarray:
        p = TISSUES[tissue]
        echo = p.echo * self._jittered(tissue, 0.2)
        return np.array([echo, p.attenuation, p.reflectivity], dtype=np.float32)

    def acquisition(self, anatomy: Anatomy, warp: Warp, rng: np.random.Generator, spacing, shift: DomainShift,
                    max_voxels: int) -> Acquisition:
        """The probe's box: i lateral, j depth, k elevation, in world LPS; isotropic voxels."""
        probe = probe_for(anatomy, rng)
        inverse = np.linalg.inv(warp.matrix)
        apex = warp.to_world(probe.apex)
        axis = _unit(inverse @ probe.axis)
        lateral = _unit(inverse @ probe.lateral)
        lateral = _unit(lateral - np.dot(lateral, axis) * axis)
        elevation = np.cross(lateral, axis)
        if rng.random() < 0.5:  # which side the probe's orientation marker is on
            lateral, elevation = -lateral, -elevation
        direction = np.column_stack([lateral, axis, elevation])
        far = probe.near_mm + probe.depth_mm
        extent = np.array([2 * far * np.sin(probe.lateral_half_angle), far, 2 * far * np.sin(probe.elevation_half_angle)])
        if spacing is None:
            voxel = float(rng.uniform(0.5, 1.0))
        else:
            voxel = float(np.mean(np.broadcast_to(np.asarray(spacing, dtype=float), (3,))))
        voxel *= shift.spacing_factor
        count = float(np.prod(extent / voxel))
        if count > max_voxels:
            voxel *= (count / max_voxels) ** (1 / 3)
        shape = np.maximum(np.round(extent / voxel).astype(int), 2)
        origin = apex + direction @ np.array([-(shape[0] - 1) * voxel / 2, 0.0, -(shape[2] - 1) * voxel / 2])
        self._probe = (probe, voxel, shape)
        return Acquisition(tuple(int(s) for s in shape), (voxel,) * 3, origin, direction, "probe")

    def finish(self, canvas: Canvas, acquisition: Acquisition) -> np.ndarray:
        probe, voxel, shape = self._probe
        ni, nj, nk = acquisition.shape_ijk
        # Probe coordinates of every voxel (mm): a lateral, b depth, c elevation.
        a = ((np.arange(ni) - (ni - 1) / 2) * voxel).astype(np.float32)[None, None, :]
        b = (np.arange(nj) * voxel).astype(np.float32)[None, :, None]
        c = ((np.arange(nk) - (nk - 1) / 2) * voxel).astype(np.float32)[:, None, None]
        r = np.sqrt(a * a + b * b + c * c)
        theta = np.arctan2(a, np.maximum(b, 1e-3))
        phi = np.arctan2(c, np.maximum(b, 1e-3))
        far = probe.near_mm + probe.depth_mm
        fan = (r >= probe.near_mm) & (r <= far) & (np.abs(theta) <= probe.lateral_half_angle) & \
            (np.abs(phi) <= probe.elevation_half_angle)
        self.field_of_view = fan

        # Beam grid: radius x lateral angle x elevation angle.
        nr = max(int(probe.depth_mm / voxel), 8)
        nt = max(int(2 * probe.lateral_half_angle * (probe.near_mm + probe.depth_mm / 2) / (1.5 * voxel)), 8)
        np_ = max(int(2 * probe.elevation_half_angle * (probe.near_mm + probe.depth_mm / 2) / (2.0 * voxel)), 4)
        radii = np.linspace(probe.near_mm, far, nr)
        thetas = np.linspace(-probe.lateral_half_angle, probe.lateral_half_angle, nt)
        phis = np.linspace(-probe.elevation_half_angle, probe.elevation_half_angle, np_)
        rr, tt, pp = np.meshgrid(radii, thetas, phis, indexing="ij")
        depth_axis = rr / np.sqrt(1 + np.tan(tt) ** 2 + np.tan(pp) ** 2)
        voxel_index = np.stack([  # [k, j, i] of each beam sample
            (depth_axis * np.tan(pp)) / voxel + (nk - 1) / 2,
            depth_axis / voxel,
            (depth_axis * np.tan(tt)) / voxel + (ni - 1) / 2,
        ])
        def to_beams(channel: np.ndarray) -> np.ndarray:
            return ndimage.map_coordinates(channel, voxel_index, order=1, mode="nearest", prefilter=False)

        echo = to_beams(canvas.channels[0])
        attenuation = to_beams(canvas.channels[1])
        reflectivity = to_beams(canvas.channels[2])

        # Along each beam: loss beyond the time-gain compensation, and what reflectors let through.
        step_cm = (radii[1] - radii[0]) / 10.0
        excess_db = np.cumsum(2 * (attenuation - self.tgc_db_per_cm) * step_cm, axis=0)
        excess_db = np.maximum(excess_db, -20.0)
        rise = np.maximum(np.diff(reflectivity, axis=0, prepend=reflectivity[:1]), 0.0)
        passed = np.exp(np.cumsum(np.log1p(-np.minimum(rise, 0.995)), axis=0))
        transmission = passed * 10 ** (-excess_db / 20)
        interface = np.roll(transmission, 1, axis=0) * rise  # echo from the surface of a reflector

        speckle_sigma = (0.6, 1.0, 0.8)
        real = ndimage.gaussian_filter(self.rng.standard_normal(rr.shape).astype(np.float32), speckle_sigma)
        imaginary = ndimage.gaussian_filter(self.rng.standard_normal(rr.shape).astype(np.float32), speckle_sigma)
        speckle = np.sqrt(real * real + imaginary * imaginary)
        speckle /= speckle.mean()
        # Formed along the beams, at the beams' resolution (coarser laterally with depth), as a scanner does.
        amplitude_beams = ((echo * transmission + 2.0 * interface) * speckle).astype(np.float32)

        beam_index = np.stack(np.broadcast_arrays(
            (r - probe.near_mm) / (far - probe.near_mm) * (nr - 1),
            (theta + probe.lateral_half_angle) / (2 * probe.lateral_half_angle) * (nt - 1),
            (phi + probe.elevation_half_angle) / (2 * probe.elevation_half_angle) * (np_ - 1),
        )).astype(np.float32)
        amplitude = ndimage.map_coordinates(amplitude_beams, beam_index, order=1, mode="nearest", prefilter=False)
        amplitude += np.abs(self.rng.standard_normal(amplitude.shape, dtype=np.float32)) * np.float32(0.01 * self.shift.noise)
        decibels = 20 * np.log10(amplitude + 1e-6) + self.gain_db
        image = np.clip(255.0 * (decibels + self.dynamic_range_db) / self.dynamic_range_db, 0, 255).astype(np.float32)
        image = self._shift_and_blur(image, acquisition)
        image = np.clip(image, 0, 255)
        image[~fan] = 0.0
        return image.astype(np.float32)
