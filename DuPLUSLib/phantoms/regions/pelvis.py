"""The male pelvis from the iliac crests to below the pubic symphysis (z = 0 at the femoral heads).

Iliac wings and sacrum behind, acetabula round the femoral heads (the patient's left at +x), femoral
necks and shafts, pubic rami meeting in front; the bladder (filled to a random volume) above the
prostate, seminal vesicles behind the bladder, the rectum behind the prostate curving up into the
sigmoid; obturator, gluteal and iliopsoas muscles, iliac vessels and small bowel above the bladder.
"""

from __future__ import annotations

import numpy as np

from ..anatomy import TUMOUR_PROBABILITY, Anatomy, jitter, point_inside, scale
from ..shapes import Ellipsoid, Intersection, Offset, Shell, Tube, half_space, rotation_matrix, smooth_path
from .common import add_table, add_trunk, tumour_shape


def build_pelvis(rng: np.random.Generator, modality: str) -> Anatomy:
    z_range = (-400.0, 400.0)
    anatomy = Anatomy("pelvis", [], body=None, fov_center=np.zeros(3), fov_size=np.zeros(3))  # type: ignore[arg-type]
    trunk = add_trunk(anatomy, rng, (175.0, 118.0), z_range, wall=10.0)
    a, b = trunk.radii
    anatomy.body = trunk.body
    cavity = trunk.cavity
    for side in (-1, 1):
        anatomy.add(Intersection((Ellipsoid((side * 85, 70, 30), (65, 45, 90)), cavity)), "muscle")  # gluteus
        anatomy.add(Tube(smooth_path([(side * 45, 20, 140), (side * 70, -15, 40), (side * 85, -35, -30)]), 18.0), "muscle")
        anatomy.add(Ellipsoid((side * 62, 5, -25), (14, 35, 30)), "muscle")  # obturator internus
    for _ in range(int(rng.integers(2, 5))):  # small bowel above the bladder
        start = np.array([rng.uniform(-60, 60), rng.uniform(-60, 10), rng.uniform(50, 120)])
        points = [start] + [start + rng.normal(0, 25, 3) * (i + 1) / 2 for i in range(3)]
        anatomy.add(Intersection((Tube(smooth_path(points), 12.0), cavity)), "bowel")

    heads = {}
    for side, suffix in ((-1, "right"), (1, "left")):
        center = jitter(rng, (side * 88, 0, 0), 3)
        radius = float(rng.uniform(21, 26))
        heads[suffix] = (center, radius)
        acetabulum = Intersection((Shell(Ellipsoid(center, (radius + 7,) * 3), 6.0), half_space(0, center[0] - side * 2, keep_below=side > 0)))
        anatomy.add(acetabulum, "bone")
        iliac_wing = Shell(Ellipsoid((side * 75, 35, 85), (50, 35, 65), rotation_matrix((0, side * 20, side * 25))), 7.0)
        anatomy.add(Intersection((iliac_wing, half_space(2, 25, keep_below=False), half_space(1, 45, keep_below=True))), "bone")
        anatomy.add(Tube(np.array([center + (side * 5, -5, -10), (side * 15, -75, -30)]), 9.0), "bone")  # pubic ramus
        anatomy.add(Tube(np.array([center + (0, 8, -15), (side * 55, 35, -55)]), 11.0), "bone")  # ischium
        neck = np.array([center, center + (side * 35, 5, -28), (side * 120, 8, -60), (side * 118, 5, -260)])
        anatomy.add(Tube(neck, [14.0, 15.0, 16.0, 14.0]), "bone")
        anatomy.add(Tube(neck, [9.0, 10.0, 10.0, 8.0]), "marrow")
        anatomy.add(Ellipsoid(center, (radius,) * 3), "bone", f"femoral_head_{suffix}")
        anatomy.add(Ellipsoid(center, (radius - 3,) * 3), "marrow", f"femoral_head_{suffix}")
    sacrum = Ellipsoid((0, 80, 55), (42, 16, 60), rotation_matrix((-25, 0, 0)))
    anatomy.add(sacrum, "bone")
    anatomy.add(Offset(sacrum, -3), "marrow")
    for side in (-1, 1):
        anatomy.add(Tube(smooth_path([(side * 15, 20, 180), (side * 45, 20, 60), (side * 80, -30, -10)]), 6.0), "blood")

    fill = float(rng.uniform(0.7, 1.3))
    bladder = Ellipsoid(jitter(rng, (0, -40, 18), 5), scale(rng, (42, 32, 32), 0.1) * fill ** (1 / 3))
    anatomy.add(bladder, "bladder_wall", "bladder")
    anatomy.add(Offset(bladder, -3.0), "urine", "bladder")
    for side in (-1, 1):
        anatomy.add(Ellipsoid((side * 22, 0, -8), (18, 7, 9), rotation_matrix((0, 0, side * 25))), "gland")
    prostate = Ellipsoid(jitter(rng, (0, -25, -38), 3), scale(rng, (21, 17, 18), 0.15))
    anatomy.add(prostate, "prostate", "prostate")
    rectum_path = smooth_path([(0, 28, -90), (0, 18, -40), (0, 32, 10), (8, 55, 60), (30, 40, 110)])
    rectum = Tube(rectum_path, rng.uniform(14, 20))
    anatomy.add(rectum, "rectum_wall", "rectum")
    anatomy.add(Offset(rectum, -4.0), "bowel", "rectum")
    if rng.random() < 0.5:
        anatomy.add(Intersection((Offset(rectum, -5.0), Ellipsoid((0, 20, 0), (30, 20, 40)))), "gas", "rectum")

    if modality in ("PET", "US") and rng.random() < TUMOUR_PROBABILITY:
        radius = float(rng.uniform(5, 12))
        center = point_inside(rng, prostate, margin=radius * 0.5)
        if center is not None:
            anatomy.add(Intersection((tumour_shape(rng, center, radius), prostate)), "tumour", "lesion", within=("prostate",))
        if modality == "PET" and rng.random() < 0.5:
            side = 1 if rng.random() < 0.5 else -1
            anatomy.add(Ellipsoid(jitter(rng, (side * 50, 10, 50), 8), scale(rng, (8, 8, 11), 0.3)), "tumour", "lesion")
    if modality == "CT":
        add_table(anatomy, b, z_range)
    anatomy.fov_center = np.array([0.0, 10.0, 15.0])
    anatomy.fov_size = np.array([2 * a + 40, 2 * b + 80, rng.uniform(220, 270)])
    return anatomy
