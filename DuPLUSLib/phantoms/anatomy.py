"""What a phantom is made of before it is imaged: tissue layers in the canonical patient frame.

An :class:`Anatomy` is an ordered list of :class:`Layer` s painted back to front (a later layer takes
the voxels it covers), a body outline, and the field of view a scanner would choose. The region
modules (``regions/``) build one per case from a random generator; the imaging modules never need
to know which organ is which, only which tissue each layer is made of.

The canonical frame is LPS in millimetres (+x patient left, +y posterior, +z superior) centred on the
middle of the region, so "the liver is on the patient's right" reads ``x < 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .shapes import Shape

__all__ = ["Layer", "Anatomy", "TUMOUR_PROBABILITY"]

#: How often a case carries each optional tumour: most cases do, some do not, as in real cohorts.
TUMOUR_PROBABILITY = 0.7


@dataclass(frozen=True)
class Layer:
    """One piece of tissue.

    ``key`` names the structure whose label it adds to (``None`` for unlabelled tissue such as fat or
    bowel). ``within`` lists labels it lies inside without taking voxels from them: a tumour inside
    the liver still counts as liver, a ventricle still as brain (multi-label, as the model predicts).
    """

    shape: Shape
    tissue: str
    key: str | None = None
    within: tuple[str, ...] = ()


@dataclass
class Anatomy:
    """An ordered list of layers, the body they sit in and the field of view to image."""

    region: str
    layers: list[Layer]
    body: Shape
    fov_center: np.ndarray  # canonical mm
    fov_size: np.ndarray  # mm along patient x, y, z
    label_unions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key -> keys it includes
    notes: dict[str, object] = field(default_factory=dict)

    def add(self, shape: Shape, tissue: str, key: str | None = None, within: tuple[str, ...] = ()) -> None:
        self.layers.append(Layer(shape, tissue, key, tuple(within)))

    @property
    def keys(self) -> set[str]:
        return {layer.key for layer in self.layers if layer.key}


def jitter(rng: np.random.Generator, values, spread: float) -> np.ndarray:
    """``values`` moved by up to ``spread`` mm each (uniform), for per-case variation of positions."""
    values = np.asarray(values, dtype=float)
    return values + rng.uniform(-spread, spread, size=values.shape)


def scale(rng: np.random.Generator, values, relative: float) -> np.ndarray:
    """``values`` scaled by a random factor in [1 - relative, 1 + relative] each (sizes)."""
    values = np.asarray(values, dtype=float)
    return values * rng.uniform(1 - relative, 1 + relative, size=values.shape)


def point_inside(rng: np.random.Generator, shape: Shape, margin: float, tries: int = 400) -> np.ndarray | None:
    """A random point at least ``margin`` mm inside ``shape`` (rejection sampling in its box)."""
    low, high = shape.bounds()
    candidates = rng.uniform(low, high, size=(tries, 3))
    d = shape.sdf(candidates[:, 0], candidates[:, 1], candidates[:, 2])
    inside = np.flatnonzero(d < -margin)
    if inside.size == 0:
        return None
    return candidates[inside[0]]
