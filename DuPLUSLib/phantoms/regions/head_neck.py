"""Head and neck as planned for radiotherapy: orbits to the thoracic inlet (z = 0 near C2).

Cranium with skull and brain on top; face, mandible (horseshoe body and rami to the condyles) and
tongue; parotids lateral to the rami, submandibular glands below the mandible; eyes with lenses,
optic nerves running back and in to the chiasm; brainstem continuing as the spinal cord in the
cervical canal; the airway (nasopharynx, oropharynx, larynx, trachea) with the thyroid lobes beside
the trachea; carotids, jugulars and neck muscles. GTVp sits on the pharyngeal or laryngeal wall,
GTVn in a level II-III neck node; each appears in ~70 % of cases.
"""

from __future__ import annotations

import numpy as np

from ..anatomy import TUMOUR_PROBABILITY, Anatomy, jitter, scale
from ..shapes import Ellipsoid, EllipticCylinder, Intersection, Offset, Shell, SmoothUnion, Tube, half_space, smooth_path
from .common import add_spine, add_table, tumour_shape


def build_head_neck(rng: np.random.Generator, modality: str) -> Anatomy:
    head = Ellipsoid((0, 10, 78), scale(rng, (72, 92, 82), 0.05))
    face = Ellipsoid((0, -42, 28), (50, 45, 60))
    neck_r = float(rng.uniform(52, 64))
    neck = EllipticCylinder((0, 15), (neck_r, neck_r * 0.95), (-260, 40))
    shoulders = EllipticCylinder((0, 25), (175, 95), (-500, -150))
    jaw = Ellipsoid((0, -28, -5), (48, 42, 35))  # floor of the mouth and submandibular region
    body = SmoothUnion((head, face, jaw, neck, shoulders), 25.0)
    anatomy = Anatomy("head_neck", [], body, fov_center=np.array([0.0, 0.0, -25.0]),
                      fov_size=np.array([230.0, 250.0, rng.uniform(230, 270)]))
    anatomy.add(body, "skin")
    anatomy.add(Offset(body, -2.0), "fat")
    anatomy.add(Intersection((Offset(body, -8.0), half_space(2, 30.0, keep_below=True))), "muscle")
    anatomy.add(Offset(face, -8.0), "muscle")  # masseters, pterygoids, floor of the mouth
    for side in (-1, 1):
        anatomy.add(Ellipsoid((side * 35, -45, 30), (10, 14, 16)), "fat")  # buccal fat pads
    anatomy.add(Ellipsoid((0, -32, 50), (28, 30, 5)), "bone")  # hard palate
    anatomy.add(Ellipsoid((0, -32, 50), (24, 26, 2.5)), "marrow")

    skull = Offset(head, -5.0)
    anatomy.add(Intersection((Shell(skull, 7.0), half_space(2, 25.0, keep_below=False))), "bone")
    brain = Intersection((Offset(skull, -8.0), half_space(2, 38.0, keep_below=False)))
    anatomy.add(brain, "grey_matter")
    anatomy.add(Offset(brain, -10.0), "white_matter")

    # Cervical spine with the cord, the brainstem on top of it.
    spine = add_spine(anatomy, rng, (-240.0, 20.0), body_y=10.0, body_radii=(16.0, 12.0), level_height=18.0,
                      cord_radius=5.0)
    for side in (-1, 1):
        anatomy.add(Tube(np.array([(side * 24, 55, 40), (side * 28, 58, -250)]), 17.0), "muscle")
        anatomy.add(Tube(np.array([(side * 48, 28, 48), (side * 18, -42, -150)]), 9.0), "muscle")  # sternocleidomastoid
        anatomy.add(Tube(np.array([(side * 20, 0, -250), (side * 26, 6, 45)]), 4.0), "blood")  # carotid
        anatomy.add(Tube(np.array([(side * 30, 8, -250), (side * 36, 14, 45)]), 6.0), "blood")  # jugular
    anatomy.add(Tube(np.array([(0, 22, 82), (0, 26, 45), (0, spine.canal_y, 12)]), [13.0, 12.0, 7.0]),
                "white_matter", "brainstem")

    # Airway, tongue and the pharyngeal wall.
    airway = smooth_path([(0, -5, 62), (0, 4, 30), (0, 2, 0), (0, -8, -30), (0, -20, -55), (0, -22, -110), (0, -22, -260)])
    anatomy.add(Tube(airway, 12.0), "muscle")
    anatomy.add(Ellipsoid((0, -35, 12), scale(rng, (26, 32, 18), 0.08)), "muscle")  # tongue
    anatomy.add(Tube(airway, np.interp(np.arange(len(airway)), [0, len(airway) - 1], [8.0, 7.0])), "air")
    anatomy.add(Tube(np.array([(0, -22, -40), (0, -24, -75)]), 11.0) - Tube(np.array([(0, -22, -35), (0, -22, -80)]), 8.0),
                "cartilage")  # thyroid cartilage round the larynx

    mandible = smooth_path([(44, 14, 56), (44, 10, 2), (34, -28, -10), (0, -60, -14), (-34, -28, -10), (-44, 10, 2), (-44, 14, 56)])
    anatomy.add(Tube(mandible, 6.5), "bone", "mandible")
    anatomy.add(Tube(mandible, 3.5), "marrow", "mandible")

    for side, suffix in ((-1, "right"), (1, "left")):
        parotid = Ellipsoid(jitter(rng, (side * 50, 20, 32), 3), scale(rng, (10, 18, 23), 0.12))
        anatomy.add(Intersection((parotid, Offset(body, -3))), "gland", f"parotid_{suffix}")
        submandibular = Ellipsoid(jitter(rng, (side * 29, -18, -22), 3), scale(rng, (10, 12, 9), 0.12))
        anatomy.add(Intersection((submandibular, Offset(body, -3))), "gland", f"submandibular_{suffix}")
        eye = np.array([side * 32, -60, 78.0])
        anatomy.add(Ellipsoid(eye + (0, 8, 0), (17, 24, 16)), "fat")  # orbital fat
        anatomy.add(Ellipsoid(eye, (12, 12, 12)), "eye", f"eye_{suffix}")
        anatomy.add(Ellipsoid(eye + (0, -10, 0), (4, 2, 4)), "lens", f"eye_{suffix}")
        nerve = smooth_path([eye + (0, 10, 0), (side * 18, -32, 75), (side * 8, -18, 72)])
        anatomy.add(Tube(nerve, 2.5), "nerve", f"optic_nerve_{suffix}")
        lobe = Ellipsoid(jitter(rng, (side * 17, -20, -112), 2), scale(rng, (8, 9, 22), 0.15))
        anatomy.add(lobe, "thyroid", "thyroid")
    anatomy.add(Ellipsoid((0, -16, 71), (12, 6, 3.5)), "nerve", "optic_chiasm")
    anatomy.add(Ellipsoid((0, -30, -122), (12, 5, 6)), "thyroid", "thyroid")

    for _ in range(3):  # normal small nodes
        side = 1 if rng.random() < 0.5 else -1
        anatomy.add(Ellipsoid(jitter(rng, (side * 40, 0, -30), 15), scale(rng, (4, 4, 6), 0.3)), "lymph_node")
    _add_gtvs(anatomy, rng, body)
    if modality == "US" and rng.random() < TUMOUR_PROBABILITY:
        side = 1 if rng.random() < 0.5 else -1
        nodule = Ellipsoid(jitter(rng, (side * 17, -21, -112), 3), scale(rng, (5, 5, 6), 0.3))
        anatomy.add(nodule, "tumour", "lesion", within=("thyroid",))
    if modality == "CT":
        add_table(anatomy, 110.0, (-400.0, 400.0))
    return anatomy


def _add_gtvs(anatomy: Anatomy, rng: np.random.Generator, body) -> None:
    """GTVp on the wall of the oropharynx, nasopharynx, hypopharynx or larynx; GTVn in a neck node."""
    if rng.random() < TUMOUR_PROBABILITY:
        sites = [(8, 4, 22), (0, 8, 48), (10, 8, -22), (6, -16, -45)]
        site = np.array(sites[int(rng.integers(len(sites)))], dtype=float)
        site[0] *= 1 if rng.random() < 0.5 else -1
        radius = float(rng.uniform(10, 22))
        anatomy.add(Intersection((tumour_shape(rng, jitter(rng, site, 4), radius), Offset(body, -10))), "tumour", "gtvp")
    if rng.random() < TUMOUR_PROBABILITY:
        side = 1 if rng.random() < 0.5 else -1
        center = jitter(rng, (side * 36, -2, rng.uniform(-50, -5)), 4)
        radius = float(rng.uniform(8, 18))
        node = Intersection((tumour_shape(rng, center, radius), Offset(body, -6)))
        anatomy.add(node, "tumour", "gtvn")
        if radius > 12 and rng.random() < 0.5:
            anatomy.add(Offset(node, -0.5 * radius), "necrosis", "gtvn")
