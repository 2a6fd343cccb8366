"""The upper abdomen from the liver dome to the iliac crests (z = 0 near L1/L2).

Layout, in the patient frame (+x left, +y posterior, +z superior): liver in the right upper
quadrant under the diaphragm with the gallbladder under it; spleen left posterior; stomach left
anterior, gas on top; pancreas across the midline in front of the aorta, tail to the splenic hilum;
kidneys behind, beside the spine, the right lower; adrenals above them; aorta left-anterior of the
vertebral bodies, IVC right; colon framing the cavity and small bowel below.
"""

from __future__ import annotations

import numpy as np

from ..anatomy import TUMOUR_PROBABILITY, Anatomy, jitter, point_inside, scale
from ..shapes import Ellipsoid, Intersection, Offset, SmoothUnion, Tube, rotation_matrix, smooth_path
from .common import add_ribs, add_spine, add_table, add_trunk, tumour_shape


def build_abdomen(rng: np.random.Generator, modality: str) -> Anatomy:
    z_range = (-400.0, 400.0)
    anatomy = Anatomy("abdomen", [], body=None, fov_center=np.zeros(3), fov_size=np.zeros(3))  # type: ignore[arg-type]
    trunk = add_trunk(anatomy, rng, (160.0, 115.0), z_range)
    a, b = trunk.radii
    anatomy.body = trunk.body
    vb_y = b - trunk.fat - 62.0
    cavity = trunk.cavity

    # Muscles of the back and the psoas, painted before the viscera.
    for side in (-1, 1):
        anatomy.add(Tube(np.array([[side * 38, vb_y + 58, 200], [side * 40, vb_y + 56, -200]]), 26.0), "muscle")
        psoas = smooth_path([[side * 28, vb_y - 2, 90], [side * 38, vb_y - 10, 0], [side * 58, vb_y - 22, -140]])
        anatomy.add(Tube(psoas, np.linspace(7, 26, len(psoas))), "muscle")

    # Lung bases and the cardiac apex above the diaphragm, in the top slices.
    for side, cx in ((-1, -75.0), (1, 75.0)):
        anatomy.add(Intersection((Ellipsoid((cx, 25, 190), (70, 80, 90)), cavity)), "lung")
    anatomy.add(Ellipsoid(jitter(rng, (30, -45, 185), 8), (70, 55, 55)), "myocardium")

    _add_bowel(anatomy, rng, cavity, vb_y)
    spine = add_spine(anatomy, rng, (-160.0, 170.0), vb_y)
    add_ribs(anatomy, rng, trunk, spine, levels=np.arange(150, 40, -24) + rng.uniform(-8, 8), inset=6.0)

    liver = _add_liver(anatomy, rng, cavity)
    _add_liver_tumours(anatomy, rng, liver)  # right after the liver: whatever hides the liver hides them too
    gb_c = jitter(rng, (-45, -55, 20), 8)
    gallbladder = Ellipsoid(gb_c, scale(rng, (16, 18, 38), 0.2), rotation_matrix((35, 0, -20)))
    anatomy.add(gallbladder, "bile", "gallbladder")

    spleen_c = jitter(rng, (95, 55, 70), 8)
    spleen = Intersection((SmoothUnion((Ellipsoid(spleen_c, scale(rng, (28, 55, 50), 0.15), rotation_matrix((0, 0, -35))),
                                        Ellipsoid(spleen_c + (-12, -25, -20), (20, 30, 25))), 8.0), cavity))
    anatomy.add(spleen, "spleen", "spleen")

    stomach_path = smooth_path([jitter(rng, p, 6) for p in ((45, 15, 120), (70, -25, 80), (55, -60, 40), (15, -70, 20), (-20, -50, 15))])
    stomach = Intersection((Tube(stomach_path, np.linspace(38, 16, len(stomach_path)) * rng.uniform(0.8, 1.1)), cavity))
    anatomy.add(stomach, "stomach_wall", "stomach")
    anatomy.add(Offset(stomach, -4.0), "gastric_fluid", within=("stomach",))
    anatomy.add(Intersection((Offset(stomach, -4.0), Ellipsoid((50, -60, 110), (60, 45, 40)))), "gas", within=("stomach",))
    oesophagus = smooth_path([(8, 15, 200), (15, 12, 150), (35, 12, 118)])
    anatomy.add(Tube(oesophagus, 9.0), "muscle", "oesophagus")

    pancreas_path = smooth_path([jitter(rng, p, 5) for p in ((-35, -20, 5), (-10, -22, 18), (25, -10, 28), (60, 15, 40), (80, 35, 50))])
    anatomy.add(Tube(pancreas_path, np.linspace(16, 9, len(pancreas_path))), "pancreas", "pancreas")

    tumour_kidney = ("kidney_left" if rng.random() < 0.5 else "kidney_right") if rng.random() < TUMOUR_PROBABILITY else None
    for side, key in ((-1, "kidney_right"), (1, "kidney_left")):
        zc = -25.0 if side < 0 else -5.0  # the liver pushes the right kidney down
        center = jitter(rng, (side * 72, vb_y + 18, zc), 6)
        tilt = rotation_matrix((-15, side * 12, side * 15))
        outer = Ellipsoid(center, scale(rng, (27, 24, 55), 0.1), tilt)
        hilum = Ellipsoid(center + (-side * 26, -6, 0), (14, 12, 20))
        kidney = outer - hilum
        anatomy.add(kidney, "kidney_cortex", key)
        for dz in (-30, -10, 10, 30):
            pyramid = Ellipsoid(center + (-side * 6, 0, dz), (8, 9, 10), tilt)
            anatomy.add(Intersection((pyramid, Offset(kidney, -5))), "kidney_medulla", within=(key,))
        anatomy.add(Intersection((Ellipsoid(center + (-side * 12, -3, 0), (7, 8, 22), tilt), Offset(kidney, -3))), "urine", within=(key,))
        if key == tumour_kidney:
            _add_kidney_tumour(anatomy, rng, kidney, key)
        adrenal_c = center + (side * -8, 0, 62)
        adrenal = Ellipsoid(adrenal_c, (5, 14, 18), rotation_matrix((20, 0, side * 30))) | \
            Ellipsoid(adrenal_c + (side * 6, 6, -6), (4, 10, 14), rotation_matrix((-10, 0, -side * 20)))
        anatomy.add(adrenal, "adrenal", "adrenal_left" if side > 0 else "adrenal_right")

    aorta_x = rng.uniform(8, 20)
    aorta = smooth_path([(aorta_x - 4, vb_y - 20, 220), (aorta_x, vb_y - 28, 60), (aorta_x, vb_y - 27, -100), (aorta_x - 6, vb_y - 24, -130)])
    anatomy.add(Tube(aorta, rng.uniform(9.5, 13)), "blood", "aorta")
    for side in (-1, 1):
        iliac = smooth_path([(aorta_x - 6, vb_y - 24, -125), (side * 35, vb_y - 18, -165), (side * 55, vb_y - 5, -220)])
        anatomy.add(Tube(iliac, 7.0), "blood")
    ivc = smooth_path([(-25, vb_y - 22, -160), (-26, vb_y - 30, -20), (-28, vb_y - 42, 80), (-20, vb_y - 40, 150), (-10, vb_y - 40, 220)])
    # Its intrahepatic part is IVC, not liver, as organ label maps draw it.
    anatomy.add(Tube(ivc, rng.uniform(9.5, 12.5)), "blood", "inferior_vena_cava")
    anatomy.add(Tube(smooth_path([(-5, -12, 12), (-25, -15, 35), (-45, -10, 55)]), 7.0), "blood", within=("liver", "pancreas"))
    for target in ((-100, 0, 90), (-40, -30, 110), (10, -40, 95)):
        anatomy.add(Tube(np.array([(-22, vb_y - 40, 125), target]), [6.0, 2.5]), "blood", within=("liver",))
    for side in (-1, 1):
        renal_vein = np.array([(side * 55, vb_y + 12, -10 if side > 0 else -25), (-25, vb_y - 28, -15)])
        anatomy.add(Tube(renal_vein, 5.0), "blood")

    if modality == "PET" and rng.random() < 0.5:
        # FDG-avid nodes beside the aorta: lesions PET sees that CT labels do not.
        node = Ellipsoid(jitter(rng, (-5, vb_y - 25, -60), 15), scale(rng, (9, 8, 12), 0.3))
        anatomy.add(node, "tumour", "lesion")
    if modality == "CT":
        add_table(anatomy, b, z_range)
    anatomy.fov_center = np.array([0.0, 10.0, 15.0])
    anatomy.fov_size = np.array([2 * a + 40, 2 * b + 80, rng.uniform(230, 290)])
    return anatomy


def _add_liver(anatomy: Anatomy, rng: np.random.Generator, cavity):
    right_lobe = Ellipsoid(jitter(rng, (-72, 0, 60), 6), scale(rng, (78, 88, 82), 0.1), rotation_matrix((0, 10, 10)))
    left_lobe = Ellipsoid(jitter(rng, (5, -50, 85), 8), scale(rng, (62, 36, 34), 0.15), rotation_matrix((0, -10, -25)))
    liver = Intersection((SmoothUnion((right_lobe, left_lobe), 18.0), Offset(cavity, -1.0)))
    anatomy.add(liver, "liver", "liver")
    return liver


def _add_bowel(anatomy: Anatomy, rng: np.random.Generator, cavity, vb_y: float) -> None:
    """Colon round the edge (gas and stool) and loops of small bowel: unlabelled clutter, as in life."""
    colon = smooth_path([(-95, 0, -160), (-100, 0, -20), (-85, -55, 25), (0, -80, 15), (85, -45, 40), (105, 10, -20), (95, 10, -160)])
    colon = np.array([jitter(rng, p, 6) for p in colon])
    tube = Intersection((Tube(colon, 24.0), cavity))
    anatomy.add(tube, "bowel")
    anatomy.add(Intersection((Offset(tube, -4), Ellipsoid((0, -90, 0), (200, 70, 200)))), "gas")
    for _ in range(int(rng.integers(3, 6))):
        start = np.array([rng.uniform(-70, 70), rng.uniform(-70, 10), rng.uniform(-140, -30)])
        points = [start]
        for _ in range(4):
            points.append(points[-1] + rng.normal(0, 30, size=3))
        loop = Intersection((Tube(smooth_path(points), 13.0), cavity))
        anatomy.add(loop, "bowel")
        if rng.random() < 0.4:
            anatomy.add(Offset(loop, -3.5), "gas")


def _add_liver_tumours(anatomy: Anatomy, rng: np.random.Generator, liver) -> None:
    """One to three liver tumours in about 70 % of cases, always inside the liver."""
    if rng.random() >= TUMOUR_PROBABILITY:
        return
    for _ in range(int(rng.integers(1, 4))):
        radius = float(rng.uniform(8, 28))
        center = point_inside(rng, liver, margin=0.6 * radius)
        if center is None:
            continue
        mass = Intersection((tumour_shape(rng, center, radius), Offset(liver, -1.0)))
        anatomy.add(mass, "liver_tumour", "liver_tumour", within=("liver",))
        if radius > 18 and rng.random() < 0.5:
            anatomy.add(Offset(mass, -0.45 * radius), "necrosis", "liver_tumour", within=("liver",))


def _add_kidney_tumour(anatomy: Anatomy, rng: np.random.Generator, kidney, key: str) -> None:
    radius = float(rng.uniform(10, 26))
    center = point_inside(rng, kidney, margin=0.3 * radius)
    if center is not None:
        mass = Intersection((tumour_shape(rng, center, radius), Offset(kidney, -1.0)))
        anatomy.add(mass, "kidney_tumour", "kidney_tumour", within=(key,))
