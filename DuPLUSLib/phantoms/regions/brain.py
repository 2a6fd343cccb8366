"""The head for a brain scan (z = 0 near the centre of the brain).

Scalp, skull with diploe, a CSF rim, then the brain: cerebrum (with temporal lobes), cerebellum and
brainstem. Grey matter is the whole brain; white matter is painted over it as a folded core (a
rippled inner surface gives gyri and a cortical ribbon 2-5 mm thick) with deep grey nuclei on top.
Lateral ventricles are C-shaped tubes (frontal horn, body, atrium, temporal horn) whose size varies
as it does with age; a tumour with oedema and sometimes necrosis sits in a hemisphere in ~70 % of
cases. For ultrasound the head is a neonate's (cranial ultrasound through the fontanelle).
"""

from __future__ import annotations

import numpy as np

from ..anatomy import TUMOUR_PROBABILITY, Anatomy, Layer, point_inside, scale
from ..shapes import (Ellipsoid, EllipticCylinder, Intersection, Offset, Ripple, Scaled, Shell, SmoothUnion, Tube,
                      half_space, random_waves, smooth_path)
from .common import tumour_shape


def build_brain(rng: np.random.Generator, modality: str) -> Anatomy:
    head_radii = scale(rng, (76, 96, 86), 0.06)
    skull = Ellipsoid((0, 8, 0), head_radii)
    neck = EllipticCylinder((0, 25), (55, 55), (-260, -50))
    face = Ellipsoid((0, -40, -45), (55, 60, 50))
    body = SmoothUnion((skull, neck, face), 20.0)
    anatomy = Anatomy("brain", [], body, fov_center=np.array([0.0, 0.0, -10.0]),
                      fov_size=np.array([2 * head_radii[0] + 30, 2 * head_radii[1] + 30, 2 * head_radii[2] + 30]))
    anatomy.add(body, "skin")
    anatomy.add(Offset(body, -2.5), "fat")
    anatomy.add(Offset(face, -8), "muscle")
    anatomy.add(Offset(neck, -8), "muscle")
    for side in (-1, 1):
        anatomy.add(Ellipsoid((side * 32, -62, -28), (17, 22, 16)), "fat")
        anatomy.add(Ellipsoid((side * 32, -66, -28), (12, 12, 12)), "eye")
        anatomy.add(Ellipsoid((side * 32, -77, -28), (4, 2, 4)), "lens")
    inner_skull = Offset(skull, -5.0)
    anatomy.add(Shell(inner_skull, 6.5), "bone")
    anatomy.add(Shell(Offset(inner_skull, -2.0), 2.5), "marrow")
    if modality == "US":  # a neonate's anterior fontanelle: the acoustic window cranial ultrasound uses
        window = Ellipsoid((0, -14, head_radii[2] - 4), (22, 26, 30))
        anatomy.add(Intersection((Offset(Shell(inner_skull, 6.5), 0.5), window)), "muscle")
    intracranial = Offset(inner_skull, -6.5)
    anatomy.add(intracranial, "csf")

    cerebrum_c = np.array([0, 5, 12.0]) + rng.uniform(-3, 3, 3)
    cerebrum = Ellipsoid(cerebrum_c, scale(rng, head_radii - (14, 16, 30), 0.04))
    temporal = [Ellipsoid((side * 45, -8, -22), scale(rng, (22, 42, 22), 0.08)) for side in (-1, 1)]
    cerebellum = Ellipsoid((0, 52, -42), scale(rng, (48, 28, 22), 0.08))
    brainstem = Tube(np.array([(0, 18, -5), (0, 26, -45), (0, 30, -95)]), [12.0, 11.0, 8.0])
    cerebrum_all = Intersection((SmoothUnion((cerebrum, *temporal), 12.0), Offset(intracranial, -1.5)))
    fissure = Ellipsoid((0, 0, cerebrum_c[2] + 30), (1.5, 90, 55))
    gyri = random_waves(rng, 12, (10, 26))
    brain = Ripple(SmoothUnion((cerebrum_all - fissure, cerebellum, brainstem), 6.0), 1.2, random_waves(rng, 6, (10, 22)))
    anatomy.add(brain, "grey_matter", "brain")
    anatomy.add(brain, "grey_matter", "grey_matter", within=("brain",))
    core = Intersection((Ripple(Offset(cerebrum_all, -6.0), 5.0, gyri), Offset(cerebrum_all, -2.0), Offset(brain, -2.0)))
    white = [core, Offset(cerebellum, -9.0), brainstem]
    for shape in white:
        anatomy.add(shape, "white_matter", "white_matter", within=("brain",))
    for side in (-1, 1):
        anatomy.add(Ellipsoid((side * 13, 8, 4), (9, 14, 10)), "grey_matter", "grey_matter", within=("brain",))
        anatomy.add(Ellipsoid((side * 22, -10, 8), (8, 13, 11)), "grey_matter", "grey_matter", within=("brain",))

    size = rng.uniform(0.7, 1.6)  # ventricles widen with age and atrophy
    for side in (-1, 1):
        path = smooth_path([(side * 6, -32, 16), (side * 10, -10, 22), (side * 14, 15, 20), (side * 22, 34, 6),
                            (side * 28, 24, -12), (side * 31, 4, -24)])
        radii = np.interp(np.linspace(0, 1, len(path)), [0, 0.2, 0.5, 0.65, 0.85, 1], [4, 5.5, 5, 7, 4, 3]) * size
        anatomy.add(Tube(path, np.maximum(radii, 1.8)), "csf", "ventricles", within=("brain",))
        anatomy.add(Ellipsoid((side * 22, 32, 6), (3, 5, 3)), "choroid_plexus", "ventricles", within=("brain",))
    anatomy.add(Ellipsoid((0, 2, 2), (2.0 * size, 14, 9)), "csf", within=("brain",))

    if rng.random() < TUMOUR_PROBABILITY:
        radius = float(rng.uniform(8, 28))
        hemisphere = Intersection((cerebrum_all, half_space(0, 0.0, keep_below=rng.random() < 0.5)))
        center = point_inside(rng, hemisphere, margin=radius + 4)
        if center is not None:
            mass = Intersection((tumour_shape(rng, center, radius), Offset(brain, -2.0)))
            edema = Intersection((Ripple(Offset(mass, rng.uniform(0.3, 0.9) * radius), 3.0, random_waves(rng, 4, (15, 40))),
                                  Offset(brain, -1.0)))
            anatomy.add(edema, "edema", within=("brain", "grey_matter", "white_matter"))
            anatomy.add(mass, "brain_tumour", "brain_tumour", within=("brain",))
            if radius > 15 and rng.random() < 0.6:
                anatomy.add(Offset(mass, -0.45 * radius), "necrosis", "brain_tumour", within=("brain",))

    if modality == "CT":  # the head rest
        anatomy.add(Ellipsoid((0, head_radii[1] + 30, -20), (60, 30, 110)), "table_foam")
    if modality == "US":
        return neonatal(anatomy, rng)
    return anatomy


def neonatal(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same head at a neonate's size, for cranial ultrasound."""
    factor = float(rng.uniform(0.68, 0.78))
    anatomy.layers = [Layer(Scaled(layer.shape, factor), layer.tissue, layer.key, layer.within) for layer in anatomy.layers]
    anatomy.body = Scaled(anatomy.body, factor)
    anatomy.fov_center = anatomy.fov_center * factor
    anatomy.fov_size = anatomy.fov_size * factor
    anatomy.notes["neonatal_scale"] = factor
    return anatomy
