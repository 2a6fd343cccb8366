"""Per-region anatomy builders: ``BUILDERS[region](rng, modality) -> Anatomy``."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..anatomy import Anatomy
from .abdomen import build_abdomen
from .brain import build_brain
from .head_neck import build_head_neck
from .pelvis import build_pelvis
from .thorax import build_thorax

__all__ = ["BUILDERS", "build_anatomy"]

BUILDERS: dict[str, Callable[[np.random.Generator, str], Anatomy]] = {
    "abdomen": build_abdomen,
    "brain": build_brain,
    "thorax": build_thorax,
    "head_neck": build_head_neck,
    "pelvis": build_pelvis,
}


def build_anatomy(region: str, rng: np.random.Generator, modality: str) -> Anatomy:
    """The anatomy of one case of ``region``; ``modality`` only picks region variants it implies

    (cardiac MRI images the heart, not the whole chest; cranial ultrasound is neonatal).
    """
    try:
        builder = BUILDERS[region]
    except KeyError:
        raise ValueError(f"no phantom anatomy for region '{region}'; choose one of: {', '.join(BUILDERS)}") from None
    return builder(rng, modality)
