"""Procedural phantoms for every modality and region of the ontology, and the real MNI152 brain.

``generate_phantom(modality, region, seed)`` builds a patient from signed-distance anatomy, deforms it,
images it on a realistic scanner grid and returns the image with one mask per structure;
``mni152_case(seed)`` gives the MNI152 2009 template with brain, grey- and white-matter labels,
optionally re-sampled, re-oriented, deformed and degraded. Both are deterministic per seed.
"""

from .intensity import DomainShift
from .phantom import Phantom, generate_phantom

__all__ = ["DomainShift", "Phantom", "generate_phantom", "mni152_case"]


def mni152_case(seed: int | None = None, augment: bool = True, resolution_mm: float = 2):
    """The MNI152 brain case; see :func:`DuPLUSLib.phantoms.mni.mni152_case`."""
    from .mni import mni152_case as _mni152_case

    return _mni152_case(seed=seed, augment=augment, resolution_mm=resolution_mm)
