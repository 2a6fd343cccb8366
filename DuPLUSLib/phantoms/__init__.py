"""Procedural phantoms for every modality and region of the ontology, and the real MNI152 brain.

``generate_phantom(modality, region, seed)`` builds a patient from signed-distance anatomy
(:mod:`.regions`), deforms it (:mod:`.geometry`), images it on a realistic scanner grid with partial
volume (:mod:`.render`) and the modality's physics (:mod:`.intensity`, :mod:`.ultrasound`), and returns
the image with one boolean mask per structure of ``ontology.hierarchy[modality][region]``.
``mni152_case(seed)`` gives the MNI152 2009 template (nilearn's wheel, no download) with brain,
grey- and white-matter labels, optionally re-sampled, re-oriented, deformed and degraded.
Both are deterministic per seed, across processes.

Image units: CT in HU (int16); MRI in arbitrary units (float32, random gain); PET in SUV (float32);
ultrasound log-compressed 0-255 (float32, zero outside the fan).
"""

from .intensity import NEW_CENTRE, DomainShift
from .phantom import Phantom, generate_phantom

__all__ = ["DomainShift", "NEW_CENTRE", "Phantom", "generate_phantom", "mni152_case"]


def mni152_case(seed: int | None = None, augment: bool = True, resolution_mm: float = 2):
    """The MNI152 brain case; see :func:`DuPLUSLib.phantoms.mni.mni152_case`.

    Imported lazily: nilearn takes a second or two to import and most callers never need it.
    """
    from .mni import mni152_case as _mni152_case

    return _mni152_case(seed=seed, augment=augment, resolution_mm=resolution_mm)
