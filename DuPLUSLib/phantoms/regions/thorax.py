"""The chest from the thoracic inlet to the diaphragm (z = 0 near the carina minus 4 cm).

Lungs either side of the mediastinum, domed below by the diaphragm over the liver and stomach; the
heart left-anterior-inferior with its chambers (left ventricle with its myocardial ring, right
ventricle crescent in front of it, atria behind); ascending aorta, arch and descending aorta left of
the spine; trachea to the carina with the main bronchi; oesophagus behind the trachea; thoracic
vertebrae with the cord; ribs and sternum. Cardiac MRI images a short stack centred on the heart.
"""

from __future__ import annotations

import numpy as np

from ..anatomy import TUMOUR_PROBABILITY, Anatomy, jitter, point_inside, scale
from ..shapes import (Ellipsoid, EllipticCylinder, Intersection, Offset, SmoothUnion, Tube, half_space,
                      rotation_matrix, smooth_path)
from .common import add_ribs, add_spine, add_table, add_trunk, tumour_shape


def build_thorax(rng: np.random.Generator, modality: str) -> Anatomy:
    z_range = (-400.0, 400.0)
    anatomy = Anatomy("thorax", [], body=None, fov_center=np.zeros(3), fov_size=np.zeros(3))  # type: ignore[arg-type]
    trunk = add_trunk(anatomy, rng, (170.0, 118.0), z_range, wall=14.0)
    a, b = trunk.radii
    anatomy.body = trunk.body
    cavity = trunk.cavity
    vb_y = b - trunk.fat - 68.0
    for side in (-1, 1):
        anatomy.add(Tube(np.array([[side * 40, vb_y + 52, 250], [side * 40, vb_y + 52, -250]]), 24.0), "muscle")
        anatomy.add(Ellipsoid((side * (a - trunk.fat - 35), vb_y + 40, 60), (30, 45, 90)), "muscle")  # scapular muscles

    # Below the diaphragm: liver dome right, stomach left.
    anatomy.add(Intersection((Ellipsoid((-55, 0, -185), (110, 105, 80)), cavity)), "liver")
    anatomy.add(Intersection((Ellipsoid((60, -10, -175), (50, 45, 40)), cavity)), "stomach_wall")

    lung_inner = Offset(cavity, -2.0)
    lungs = {}
    for side, key in ((-1, "lung_right"), (1, "lung_left")):
        lung = Ellipsoid(jitter(rng, (side * 72, 10, 15), 5), scale(rng, (66, 88, 125), 0.06))
        dome = Ellipsoid((side * 60, -10, -175), (115, 130, 75 + rng.uniform(-10, 10)))
        medial = half_space(0, side * 6.0, keep_below=side < 0)
        shape = Intersection((lung, lung_inner, medial)) - dome
        lungs[key] = shape
        anatomy.add(shape, "lung", key)
        hilum = np.array([side * 45, 5, 20])
        for _ in range(5):  # pulmonary vessels fanning out from the hilum
            end = hilum + rng.normal(0, 1, 3) * (35, 50, 60)
            anatomy.add(Intersection((Tube(np.array([hilum, end]), [5.0, 1.5]), shape)), "blood", within=(key,))

    spine = add_spine(anatomy, rng, (-180.0, 200.0), vb_y, body_radii=(19.0, 16.0), level_height=25.0, cord_radius=4.5)
    add_ribs(anatomy, rng, trunk, spine, levels=np.arange(170, -150, -24) + rng.uniform(-6, 6), inset=4.0)
    anatomy.add(EllipticCylinder((0, -b + trunk.fat + 16), (16, 6), (-70, 120), power=3), "bone")

    _add_heart(anatomy, rng, modality)
    trachea = smooth_path([(0, -30, 220), (0, -22, 120), (2, -5, 45)])
    anatomy.add(Tube(trachea, 10.0), "cartilage", "trachea")
    anatomy.add(Tube(trachea, 7.5), "air", "trachea")
    for side, key in ((-1, "lung_right"), (1, "lung_left")):
        bronchus = np.array([(2, -5, 47), (side * 25, -2, 35), (side * 45, 5, 20)])
        anatomy.add(Tube(bronchus, [6.5, 6.0, 4.5]), "cartilage", within=(key,))
        anatomy.add(Tube(bronchus, [4.5, 4.0, 3.0]), "air", within=(key,))
    oesophagus = smooth_path([(3, vb_y - 28, 220), (8, vb_y - 25, 60), (18, vb_y - 30, -100), (40, vb_y - 40, -180)])
    anatomy.add(Tube(oesophagus, 8.0), "muscle", "oesophagus")
    aorta = smooth_path([jitter(rng, p, 4) for p in ((12, -22, -25), (4, -26, 40), (6, -12, 72), (18, vb_y - 20, 62),
                                                     (22, vb_y - 22, 0), (16, vb_y - 25, -200))])
    anatomy.add(Tube(aorta, np.linspace(15, 11, len(aorta)) * rng.uniform(0.9, 1.15)), "blood", "aorta")
    pulmonary = smooth_path([(-2, -48, -30), (10, -38, 25), (25, -15, 35)])
    anatomy.add(Tube(pulmonary, 12.0), "blood")
    anatomy.add(Tube(np.array([(-28, -18, 110), (-26, -20, -10)]), 10.0), "blood")  # superior vena cava

    if modality == "PET" and rng.random() < TUMOUR_PROBABILITY:
        for _ in range(int(rng.integers(1, 4))):
            key = "lung_left" if rng.random() < 0.5 else "lung_right"
            radius = float(rng.uniform(6, 18))
            center = point_inside(rng, lungs[key], margin=radius)
            if center is not None:
                anatomy.add(tumour_shape(rng, center, radius), "tumour", "lesion", within=(key,))
        if rng.random() < 0.5:
            node = Ellipsoid(jitter(rng, (-15, -5, 40), 8), scale(rng, (9, 8, 11), 0.3))
            anatomy.add(node, "tumour", "lesion")
    if modality == "CT":
        add_table(anatomy, b, z_range)
    anatomy.fov_center = np.array([0.0, 5.0, 30.0])
    anatomy.fov_size = np.array([2 * a + 40, 2 * b + 80, rng.uniform(260, 320)])
    if modality == "MRI":  # a cine stack centred on the heart
        anatomy.fov_center = np.array([20.0, -25.0, -30.0])
        anatomy.fov_size = np.array([280.0, 260.0, rng.uniform(100, 130)])
    return anatomy


def _add_heart(anatomy: Anatomy, rng: np.random.Generator, modality: str) -> None:
    """Whole heart, then its chambers inside it: LV cavity in a myocardial ring, RV crescent, atria."""
    axis = rotation_matrix((rng.uniform(-35, -20), rng.uniform(20, 40), rng.uniform(25, 45)))
    lv_c = jitter(rng, (35, -22, -50), 6)
    wall = float(rng.uniform(8, 12))
    lv_cavity = Ellipsoid(lv_c, scale(rng, (22, 22, 38), 0.12), axis)
    lv_outer = Offset(lv_cavity, wall)
    rv_c = lv_c + axis @ np.array([-30.0, 0, 5]) + (-5, -18, 0)
    rv_outer = Ellipsoid(rv_c, scale(rng, (34, 26, 42), 0.1), axis)
    la = Ellipsoid(lv_c + (-12, 35, 28), (26, 18, 20))
    ra = Ellipsoid(lv_c + (-52, 15, 18), (24, 22, 26))
    heart = SmoothUnion((lv_outer, rv_outer, la, ra), 10.0)
    anatomy.add(Offset(heart, 3.0), "fat")  # epicardial fat
    anatomy.add(heart, "myocardium", "heart")
    anatomy.add(Offset(la, -3), "blood", within=("heart",))
    anatomy.add(Offset(ra, -3), "blood", within=("heart",))
    anatomy.add(Offset(rv_outer - lv_outer, -4.0), "blood", "right_ventricle", within=("heart",))
    anatomy.add(lv_outer, "myocardium", "myocardium", within=("heart",))
    anatomy.add(lv_cavity, "blood", "left_ventricle", within=("heart",))
    for _ in range(2):  # papillary muscles
        tip = lv_c + axis @ np.array([rng.uniform(-12, 12), rng.uniform(-12, 12), -20.0])
        # Counted in the cavity, as cardiac MR contours usually do; not in the myocardial ring.
        anatomy.add(Ellipsoid(tip, (4, 4, 9), axis), "myocardium", within=("heart", "left_ventricle"))
    if modality == "US" and rng.random() < TUMOUR_PROBABILITY:
        # A mass on the wall of a chamber (thrombus or myxoma): the echo "lesion".
        chamber = lv_cavity if rng.random() < 0.6 else Offset(la, -3)
        center = point_inside(rng, chamber, margin=4.0)
        if center is not None:
            mass = Intersection((tumour_shape(rng, center, float(rng.uniform(6, 14))), Offset(heart, -2.0)))
            anatomy.add(mass, "tumour", "lesion", within=("heart",))
