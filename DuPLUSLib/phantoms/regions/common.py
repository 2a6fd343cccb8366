"""Pieces several regions share: the trunk wall, the vertebral column with its cord, ribs, table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..anatomy import Anatomy, jitter, scale
from ..shapes import Ellipsoid, EllipticCylinder, Offset, Shape, Tube, smooth_path


@dataclass(frozen=True)
class Trunk:
    """A trunk cross-section: skin outline, muscle wall and the cavity inside it (mm)."""

    body: Shape
    cavity: Shape
    radii: tuple[float, float]  # semi-axes of the skin outline, x (left-right) and y (front-back)
    fat: float  # subcutaneous fat thickness


def add_trunk(anatomy: Anatomy, rng: np.random.Generator, radii, z_range, wall: float = 12.0) -> Trunk:
    """Skin over subcutaneous fat over a muscle wall around a fat-filled cavity."""
    a, b = scale(rng, radii, 0.08)
    fat = float(rng.uniform(8, 35))
    body = EllipticCylinder((0.0, 0.0), (a, b), z_range, power=2.4)
    anatomy.add(body, "fat")
    anatomy.add(Offset(body, -fat), "muscle")
    cavity = Offset(body, -(fat + wall))
    anatomy.add(cavity, "fat")
    return Trunk(body, cavity, (a, b), fat)


@dataclass(frozen=True)
class Spine:
    """Where the column sits: vertebral body centre (y) and canal centre (y), radii, level heights."""

    body_y: float
    canal_y: float
    body_radii: tuple[float, float]
    canal_radius: float


def add_spine(
    anatomy: Anatomy,
    rng: np.random.Generator,
    z_range: tuple[float, float],
    body_y: float,
    body_radii=(22.0, 17.0),
    level_height: float = 30.0,
    cord_radius: float = 5.0,
    key: str | None = "vertebrae",
    cord_key: str | None = "spinal_cord",
    x_of_z=None,
) -> Spine:
    """Vertebrae (cortical shell, marrow, posterior arch, processes), discs, canal and cord.

    Every vertebra is its own layer so each is evaluated only inside its own small box.
    """
    rx, ry = scale(rng, body_radii, 0.06)
    canal_r = max(cord_radius + 3.5, 0.45 * ry)
    canal_y = body_y + ry + canal_r + 1.5
    z0, z1 = z_range
    phase = rng.uniform(0, level_height)
    x_at = x_of_z or (lambda z: 0.0)
    zs = np.arange(z0 - level_height + phase, z1 + level_height, level_height)
    column = Tube(np.array([[x_at(z), body_y, z] for z in np.linspace(z0 - 40, z1 + 40, 8)]), min(rx, ry))
    anatomy.add(column, "disc")
    bone_layers = []
    for zc in zs:
        h = 0.5 * level_height - 3.0  # a 6 mm disc between bodies
        x = x_at(zc)
        vb = EllipticCylinder((x, body_y), (rx, ry), (zc - h, zc + h), power=2.2)
        bone_layers.append((vb, "bone"))
        bone_layers.append((Offset(vb, -2.0), "marrow"))
        arch_points = np.array([
            [x - rx * 0.55, body_y + ry * 0.8, zc],
            [x - canal_r - 3, canal_y, zc],
            [x - canal_r * 0.6, canal_y + canal_r + 3, zc - 3],
            [x, canal_y + canal_r + 4, zc - 4],
            [x + canal_r * 0.6, canal_y + canal_r + 3, zc - 3],
            [x + canal_r + 3, canal_y, zc],
            [x + rx * 0.55, body_y + ry * 0.8, zc],
        ])
        bone_layers.append((Tube(arch_points, 3.5), "bone"))
        spinous = np.array([[x, canal_y + canal_r + 4, zc - 4], [x, canal_y + canal_r + 28, zc - 14]])
        bone_layers.append((Tube(spinous, [4.0, 3.0]), "bone"))
        for side in (-1, 1):
            transverse = np.array([[x + side * (canal_r + 3), canal_y, zc], [x + side * (canal_r + 26), canal_y - 3, zc]])
            bone_layers.append((Tube(transverse, [4.0, 3.0]), "bone"))
    canal_points = np.array([[x_at(z), canal_y, z] for z in np.linspace(z0 - 40, z1 + 40, 8)])
    anatomy.add(Tube(canal_points, canal_r), "csf")
    for shape, tissue in bone_layers:
        anatomy.add(shape, tissue, key, within=(key,) if key else ())
    anatomy.add(Tube(canal_points, cord_radius), "nerve", cord_key)
    return Spine(body_y, canal_y, (float(rx), float(ry)), float(canal_r))


def add_ribs(anatomy: Anatomy, rng: np.random.Generator, trunk: Trunk, spine: Spine, levels, inset: float) -> None:
    """Ribs: arcs from the transverse processes round the inner chest wall, falling towards the front."""
    a = trunk.radii[0] - trunk.fat - inset
    b = trunk.radii[1] - trunk.fat - inset
    for z in levels:
        for side in (-1, 1):
            theta = np.linspace(0.25, 2.55, 9)  # from beside the spine (posterior) round to the front
            drop = rng.uniform(25, 45)
            points = np.column_stack([
                side * a * np.sin(theta),
                b * np.cos(theta),
                z - drop * (theta - theta[0]) / (theta[-1] - theta[0]),
            ])
            points[0] = [side * (spine.canal_radius + 16), spine.canal_y - 2, z + 4]
            anatomy.add(Tube(smooth_path(points, 3), 4.5), "bone")


def add_table(anatomy: Anatomy, body_back_y: float, z_range) -> None:
    """A CT couch: a carbon-fibre shell around foam, a few centimetres behind the patient's back."""
    top = body_back_y + float(8)
    plate = EllipticCylinder((0.0, top + 22.0), (240.0, 22.0), z_range, power=6.0)
    anatomy.add(plate, "table")
    anatomy.add(Offset(plate, -3.0), "table_foam")


def tumour_shape(rng: np.random.Generator, center, radius: float) -> Shape:
    """A lobulated, slightly elongated mass: an ellipsoid with a random bumpy surface."""
    from ..shapes import Ripple, random_waves, rotation_matrix

    radii = scale(rng, [radius] * 3, 0.25)
    base = Ellipsoid(tuple(center), tuple(radii), rotation_matrix(rng.uniform(-90, 90, size=3)))
    return Ripple(base, amplitude=0.12 * radius, waves=random_waves(rng, 4, (0.8 * radius, 3 * radius)))


__all__ = ["Trunk", "Spine", "add_trunk", "add_spine", "add_ribs", "add_table", "tumour_shape", "jitter"]
