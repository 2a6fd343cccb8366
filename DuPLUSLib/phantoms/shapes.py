"""Signed-distance shapes in the canonical patient frame (LPS, millimetres).

Anatomy is written as signed distance functions (negative inside, zero on the surface, roughly the
distance in mm elsewhere) because one function then gives three things the phantom needs: the label
(``sdf < 0``), a partial-volume fraction at any voxel size (a soft ramp across the surface) and
shells, offsets and smooth unions for free. Every shape also reports a conservative axis-aligned
bounding box so the renderer evaluates it only where it can be non-empty; that is what keeps a
whole phantom under a second.

Points are passed as three arrays ``x, y, z`` (any, equal shapes) to avoid stacking big arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

Bounds = tuple[np.ndarray, np.ndarray]  # (low corner, high corner), mm

#: Distance reported for points a shape did not bother to evaluate because they are far from it.
FAR = 1.0e4
#: Points within this many mm of a tube segment's box get an exact distance to it.
CULL_MARGIN = 30.0

__all__ = [
    "Shape",
    "Ellipsoid",
    "Tube",
    "EllipticCylinder",
    "Union",
    "SmoothUnion",
    "Intersection",
    "Difference",
    "Offset",
    "Shell",
    "Ripple",
    "rotation_matrix",
    "smooth_path",
    "Scaled",
    "Box",
    "half_space",
    "random_waves",
]


def rotation_matrix(degrees_xyz: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), as a 3x3 matrix acting on column vectors."""
    ax, ay, az = np.radians(np.asarray(degrees_xyz, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Shape:
    """A signed distance function with a bounding box."""

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bounds(self) -> Bounds:
        raise NotImplementedError

    # Operators read like the anatomy they build: liver - gallbladder_fossa, lobe | lobe.
    def __or__(self, other: "Shape") -> "Shape":
        return Union((self, other))

    def __and__(self, other: "Shape") -> "Shape":
        return Intersection((self, other))

    def __sub__(self, other: "Shape") -> "Shape":
        return Difference(self, other)


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """An ellipsoid; ``rotation`` turns its local axes into patient axes."""

    center: Sequence[float]
    radii: Sequence[float]
    rotation: np.ndarray | None = None

    def sdf(self, x, y, z):
        cx, cy, cz = (float(c) for c in self.center)
        dx, dy, dz = x - cx, y - cy, z - cz
        if self.rotation is not None:
            r = np.asarray(self.rotation, dtype=float).T  # patient -> local
            dx, dy, dz = (
                r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz,
                r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz,
                r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz,
            )
        a, b, c = (float(v) for v in self.radii)
        # Quilez's approximation: exact on the surface, good near it, cheap everywhere.
        k0 = np.sqrt((dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)
        k1 = np.sqrt((dx / (a * a)) ** 2 + (dy / (b * b)) ** 2 + (dz / (c * c)) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)

    def bounds(self):
        center = np.asarray(self.center, dtype=float)
        radii = np.asarray(self.radii, dtype=float)
        if self.rotation is None:
            return center - radii, center + radii
        extent = np.abs(np.asarray(self.rotation, dtype=float)) @ radii
        return center - extent, center + extent


def smooth_path(points: Sequence[Sequence[float]], samples_per_segment: int = 4) -> np.ndarray:
    """A Catmull-Rom curve through control points, so tubes bend instead of kinking."""
    p = np.asarray(points, dtype=float)
    if len(p) < 3:
        return p
    padded = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for s in range(len(p) - 1):
        p0, p1, p2, p3 = padded[s : s + 4]
        for t in np.linspace(0, 1, samples_per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(
                0.5
                * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)
            )
    out.append(p[-1])
    return np.asarray(out)


@dataclass(frozen=True)
class Tube(Shape):
    """A tube along a polyline whose radius varies linearly between points (vessels, cord, ribs)."""

    points: np.ndarray
    radii: np.ndarray | float

    def _radii(self) -> np.ndarray:
        points = np.asarray(self.points, dtype=float)
        return np.broadcast_to(np.asarray(self.radii, dtype=float), (len(points),))

    def sdf(self, x, y, z):
        points = np.asarray(self.points, dtype=float)
        radii = self._radii()
        shape = np.shape(x)
        x, y, z = (np.ravel(c) for c in (x, y, z))
        # Each segment is evaluated only near itself; farther points keep FAR (a capped distance),
        # which keeps many-segment tubes (ribs, colon) about as cheap as a single capsule.
        cull = len(points) > 3 and x.size > 4096
        best = np.full(x.shape, FAR, dtype=np.float32)
        for (a, b), (ra, rb) in zip(zip(points[:-1], points[1:]), zip(radii[:-1], radii[1:])):
            if cull:
                reach = max(ra, rb) + CULL_MARGIN
                low, high = np.minimum(a, b) - reach, np.maximum(a, b) + reach
                index = np.flatnonzero((x > low[0]) & (x < high[0]) & (y > low[1]) & (y < high[1])
                                       & (z > low[2]) & (z < high[2]))
                if index.size == 0:
                    continue
                px, py, pz = x[index] - a[0], y[index] - a[1], z[index] - a[2]
            else:
                index = slice(None)
                px, py, pz = x - a[0], y - a[1], z - a[2]
            ab = b - a
            length2 = float(ab @ ab) or 1e-9
            t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / length2, 0.0, 1.0)
            d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2) - (ra + t * (rb - ra))
            best[index] = np.minimum(best[index], d)
        return best.reshape(shape)

    def bounds(self):
        points = np.asarray(self.points, dtype=float)
        r = self._radii()[:, None]
        return (points - r).min(axis=0), (points + r).max(axis=0)


@dataclass(frozen=True)
class EllipticCylinder(Shape):
    """A cylinder along z with an elliptic (or rounded-rectangle, ``power`` > 2) cross-section.

    Bodies and necks are this: a superellipse in the axial plane between two axial planes.
    """

    center: Sequence[float]
    radii_xy: Sequence[float]
    z_range: Sequence[float]
    power: float = 2.0

    def sdf(self, x, y, z):
        cx, cy = float(self.center[0]), float(self.center[1])
        a, b = (float(v) for v in self.radii_xy)
        n = self.power
        u, v = np.abs(x - cx) / a, np.abs(y - cy) / b
        rho = (u**n + v**n) ** (1.0 / n)
        radial = (rho - 1.0) * min(a, b)
        z0, z1 = (float(v) for v in self.z_range)
        axial = np.abs(z - 0.5 * (z0 + z1)) - 0.5 * (z1 - z0)
        return np.maximum(radial, axial)

    def bounds(self):
        a, b = self.radii_xy
        cx, cy = self.center[0], self.center[1]
        return np.array([cx - a, cy - b, self.z_range[0]]), np.array([cx + a, cy + b, self.z_range[1]])


@dataclass(frozen=True)
class Union(Shape):
    parts: tuple[Shape, ...]

    def sdf(self, x, y, z):
        out = self.parts[0].sdf(x, y, z)
        for part in self.parts[1:]:
            out = np.minimum(out, part.sdf(x, y, z))
        return out

    def bounds(self):
        boxes = [p.bounds() for p in self.parts]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


@dataclass(frozen=True)
class SmoothUnion(Shape):
    """A union that fills the crease between parts (``blend`` mm), so lobes merge like organs do."""

    parts: tuple[Shape, ...]
    blend: float = 10.0

    def sdf(self, x, y, z):
        k = float(self.blend)
        out = self.parts[0].sdf(x, y, z)
        for part in self.parts[1:]:
            other = part.sdf(x, y, z)
            h = np.clip(0.5 + 0.5 * (other - out) / k, 0.0, 1.0)
            out = other * (1 - h) + out * h - k * h * (1 - h)
        return out

    def bounds(self):
        return Union(self.parts).bounds()


@dataclass(frozen=True)
class Intersection(Shape):
    parts: tuple[Shape, ...]

    def sdf(self, x, y, z):
        out = self.parts[0].sdf(x, y, z)
        for part in self.parts[1:]:
            out = np.maximum(out, part.sdf(x, y, z))
        return out

    def bounds(self):
        boxes = [p.bounds() for p in self.parts]
        low = np.max([b[0] for b in boxes], axis=0)
        high = np.min([b[1] for b in boxes], axis=0)
        return low, np.maximum(high, low)


@dataclass(frozen=True)
class Difference(Shape):
    """``keep`` with ``cut`` removed."""

    keep: Shape
    cut: Shape

    def sdf(self, x, y, z):
        return np.maximum(self.keep.sdf(x, y, z), -self.cut.sdf(x, y, z))

    def bounds(self):
        return self.keep.bounds()


@dataclass(frozen=True)
class Offset(Shape):
    """Grow (``distance`` > 0) or shrink (< 0) a shape by a distance in mm."""

    shape: Shape
    distance: float

    def sdf(self, x, y, z):
        return self.shape.sdf(x, y, z) - float(self.distance)

    def bounds(self):
        low, high = self.shape.bounds()
        grow = max(float(self.distance), 0.0)
        return low - grow, high + grow


@dataclass(frozen=True)
class Shell(Shape):
    """The wall of a shape, ``thickness`` mm thick, lying inside its surface (skull, bladder wall)."""

    shape: Shape
    thickness: float

    def sdf(self, x, y, z):
        d = self.shape.sdf(x, y, z)
        half = 0.5 * float(self.thickness)
        return np.abs(d + half) - half

    def bounds(self):
        return self.shape.bounds()


@dataclass(frozen=True)
class Ripple(Shape):
    """A shape whose surface is pushed in and out by a smooth 3D pattern (gyri, lobulated tumours).

    ``waves`` are (kx, ky, kz, phase) in radians per mm; the pattern's amplitude is ``amplitude`` mm.
    """

    shape: Shape
    amplitude: float
    waves: tuple[tuple[float, float, float, float], ...] = field(default=())

    def sdf(self, x, y, z):
        pattern = 0.0
        for kx, ky, kz, phase in self.waves:
            pattern = pattern + np.sin(kx * x + ky * y + kz * z + phase)
        scale = float(self.amplitude) / max(np.sqrt(len(self.waves)), 1.0)
        return self.shape.sdf(x, y, z) + scale * pattern

    def bounds(self):
        low, high = self.shape.bounds()
        reach = float(self.amplitude) * max(np.sqrt(len(self.waves)), 1.0)
        return low - reach, high + reach


@dataclass(frozen=True)
class Scaled(Shape):
    """A shape scaled about the origin by ``factor`` (a neonate's head from an adult's)."""

    shape: Shape
    factor: float

    def sdf(self, x, y, z):
        f = float(self.factor)
        return self.shape.sdf(x / f, y / f, z / f) * f

    def bounds(self):
        low, high = self.shape.bounds()
        return low * float(self.factor), high * float(self.factor)


def half_space(axis: int, threshold: float, keep_below: bool, extent: float = 1000.0) -> Shape:
    """Everything on one side of an axial/sagittal/coronal plane (within ``extent`` mm), as a box."""
    center = [0.0, 0.0, 0.0]
    radii = [extent, extent, extent]
    center[axis] = threshold - extent if keep_below else threshold + extent
    return Box(tuple(center), tuple(radii))


@dataclass(frozen=True)
class Box(Shape):
    """An axis-aligned box (exact distance)."""

    center: Sequence[float]
    half_sizes: Sequence[float]

    def sdf(self, x, y, z):
        q = [np.abs(c - float(m)) - float(h) for c, m, h in zip((x, y, z), self.center, self.half_sizes)]
        outside = np.sqrt(sum(np.maximum(v, 0.0) ** 2 for v in q))
        inside = np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0.0)
        return outside + inside

    def bounds(self):
        c, h = np.asarray(self.center, dtype=float), np.asarray(self.half_sizes, dtype=float)
        return c - h, c + h


def random_waves(rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float]) -> tuple:
    """Random plane waves for :class:`Ripple`: random directions, wavelengths and phases."""
    waves = []
    for _ in range(count):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength_mm)
        waves.append((*(k * direction), rng.uniform(0, 2 * np.pi)))
    return tuple(waves)
