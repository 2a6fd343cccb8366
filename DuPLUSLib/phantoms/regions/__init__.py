"""Per-region anatomy builders: ``BUILDERS[region](rng, modality) -> Anatomy``."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..anatomy import Anatomy
from .abdomen import build_abdomen

BUILDERS: dict[str, Callable[[np.random.Generator, str], Anatomy]] = {
    "abdomen": build_abdomen,
}

try:  # regions are added one module at a time
    from .brain import build_brain

    BUILDERS["brain"] = build_brain
except ImportError:  # pragma: no cover
    pass
try:
    from .thorax import build_thorax

    BUILDERS["thorax"] = build_thorax
except ImportError:  # pragma: no cover
    pass
try:
    from .head_neck import build_head_neck

    BUILDERS["head_neck"] = build_head_neck
except ImportError:  # pragma: no cover
    pass
try:
    from .pelvis import build_pelvis

    BUILDERS["pelvis"] = build_pelvis
except ImportError:  # pragma: no cover
    pass
