"""``generate_phantom``: one deterministic, labelled, realistic-looking case per (modality, region, seed).

The pipeline, one module per step: the region builds its anatomy in the canonical patient frame
(:mod:`.regions`), a random :class:`~.geometry.Warp` makes this patient's body, the modality picks a
scanner grid (:func:`acquisition_for`), the renderer paints tissue and labels with partial volume
(:mod:`.render`) and the imaging model turns tissue into HU, signal, SUV or echoes (:mod:`.intensity`).
Anatomy, body shape, grid and appearance draw from separate random streams, so overriding the spacing
or adding a domain shift changes the image and not the patient.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UnknownPromptError
from ..imageio import VolumeImage
from ..ontology import Ontology, load_ontology
from .anatomy import Anatomy, Layer
from .geometry import Acquisition, Warp, make_acquisition, random_direction, random_warp
from .intensity import DomainShift, make_imaging_model
from .regions import build_anatomy
from .render import paint

__all__ = ["Phantom", "generate_phantom", "DEFAULT_MAX_VOXELS", "MAX_VOXELS"]

#: Default grids stay under this many voxels so a case takes about a second on one core.
DEFAULT_MAX_VOXELS = 3_000_000
#: Even an explicit spacing never makes a grid larger than this (256 x 256 x 128).
MAX_VOXELS = 256 * 256 * 128


@dataclass
class Phantom:
    """One generated case: image, a boolean mask per structure key, and how it was made."""

    image: VolumeImage
    labels: dict[str, np.ndarray]  # structure key -> bool [k, j, i]
    modality: str
    region: str
    seed: int | None
    body: np.ndarray | None = None  # bool [k, j, i]: inside the patient (and, for US, inside the fan)
    protocol: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def label_volume_ml(self, key: str) -> float:
        return float(self.labels[key].sum()) * float(np.prod(self.image.spacing)) / 1000.0


def case_rngs(modality: str, region: str, seed: int, streams: int = 4) -> list[np.random.Generator]:
    """Independent generators for anatomy, warp, grid and appearance, fixed by (modality, region, seed).

    crc32 rather than ``hash``: Python salts string hashes per process, which would break determinism.
    """
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(modality.encode()), zlib.crc32(region.encode())]
    return [np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(streams)]


def generate_phantom(
    modality: str,
    region: str,
    seed: int,
    *,
    spacing: float | Sequence[float] | None = None,
    size_mm: float | Sequence[float] | None = None,
    shift: DomainShift | Mapping[str, float] | None = None,
    domain: DomainShift | Mapping[str, float] | None = None,
) -> Phantom:
    """Generate one labelled case.

    ``spacing`` (mm, one value or per voxel axis i, j, k) replaces the protocol's spacing, e.g. 4 mm
    for fast tests; ``size_mm`` (patient x, y, z) replaces the field of view; ``shift`` (or its alias
    ``domain``) applies a :class:`DomainShift`, a "new centre" look, leaving the anatomy unchanged.
    Labels are returned for every structure of ``ontology.hierarchy[modality][region]`` that the
    phantom's anatomy draws (a tumour or lesion mask is empty in the ~30 % of cases without one).
    Structures it never draws (the colon, ribs or gluteal muscles that real CT labels annotate) are
    left out, not returned empty: an empty mask would teach the model that they are absent.
    """
    ontology = load_ontology()
    modality, region = _check_context(ontology, modality, region)
    if shift is not None and domain is not None:
        raise ValueError("pass the domain shift as 'shift' or 'domain', not both")
    shift = DomainShift.coerce(shift if shift is not None else domain)
    anatomy_rng, warp_rng, grid_rng, imaging_rng = case_rngs(modality, region, seed)

    anatomy = build_anatomy(region, anatomy_rng, modality)
    wanted = ontology.structures_of(modality, region)
    anatomy = select_labels(anatomy, wanted, ontology)
    warp = random_warp(warp_rng)
    model = make_imaging_model(modality, region, imaging_rng, shift)
    acquisition = acquisition_for(modality, region, anatomy, warp, grid_rng, spacing, size_mm, shift, model)
    canvas = paint(anatomy, acquisition, warp, model.values, model.background)
    image_array = model.finish(canvas, acquisition)
    drawn = drawn_structures(anatomy, wanted, ontology)
    labels = {key: canvas.labels.get(key, np.zeros(acquisition.shape_kji, dtype=bool)) for key in wanted if key in drawn}
    body = canvas.body
    notes = {"plane": acquisition.plane, **anatomy.notes}
    if getattr(model, "field_of_view", None) is not None:  # ultrasound: nothing is seen outside the fan
        body = body & model.field_of_view
        labels = {key: mask & model.field_of_view for key, mask in labels.items()}
        notes["field_of_view"] = model.field_of_view
    image = VolumeImage(
        array=image_array,
        spacing=acquisition.spacing,
        origin=tuple(acquisition.origin),
        direction=acquisition.direction,
        metadata={"DuPLUS.Phantom": f"{modality}/{region}/{seed}", "DuPLUS.Protocol": model.protocol},
    )
    return Phantom(image, labels, modality, region, seed, body, model.protocol, notes=notes)


def _check_context(ontology: Ontology, modality: str, region: str) -> tuple[str, str]:
    if modality not in ontology.hierarchy:
        raise UnknownPromptError(f"unknown modality '{modality}'; choose one of: {', '.join(ontology.hierarchy)}")
    if region not in ontology.hierarchy[modality]:
        raise UnknownPromptError(
            f"'{region}' is not a region of {modality}; choose one of: {', '.join(ontology.hierarchy[modality])}"
        )
    return modality, region


def drawn_structures(anatomy: Anatomy, wanted: Sequence[str], ontology: Ontology) -> set[str]:
    """The structures of ``wanted`` this anatomy can label: those of its layers and unions, and every
    tumour or lesion (drawn in most cases, a true negative in the others)."""
    keys = {layer.key for layer in anatomy.layers if layer.key} | set(anatomy.label_unions)
    keys |= {k for layer in anatomy.layers for k in layer.within}
    return {k for k in wanted if k in keys or ontology.structures[k].kind == "tumour"}


def select_labels(anatomy: Anatomy, wanted: Sequence[str], ontology: Ontology) -> Anatomy:
    """Keep the labels this (modality, region) annotates; tumours become ``lesion`` where that is the
    name used; other keys become unlabelled tissue (the MRI abdomen still shows vertebrae)."""
    wanted_set = set(wanted)

    def rename(key: str | None) -> str | None:
        if key is None or key in wanted_set:
            return key
        if "lesion" in wanted_set and ontology.structures[key].kind == "tumour":
            return "lesion"
        return None

    layers = [
        Layer(layer.shape, layer.tissue, rename(layer.key), tuple(k for k in map(rename, layer.within) if k))
        for layer in anatomy.layers
    ]
    unions = dict(anatomy.label_unions)
    if "lesion" in wanted_set:
        tumours = [k for k in wanted if k != "lesion" and ontology.structures[k].kind == "tumour"]
        if tumours:
            unions["lesion"] = tuple(tumours)
    return Anatomy(anatomy.region, layers, anatomy.body, anatomy.fov_center, anatomy.fov_size, unions, anatomy.notes)


# Scanner protocols: acquisition planes (weights), tilt (degrees) and spacing (i, j, k) in mm.
_PLANES = {
    "CT": {"axial": 0.6, "axial_ras": 0.25, "axial_inferior": 0.15},
    "PET": {"axial": 0.6, "axial_ras": 0.25, "axial_inferior": 0.15},
    "MRI": {"axial": 0.35, "axial_ras": 0.15, "coronal": 0.25, "sagittal": 0.25},
}


def _protocol_spacing(modality: str, region: str, rng: np.random.Generator) -> tuple[float, float, float]:
    if modality == "CT":
        in_plane = rng.uniform(0.9, 1.3) if region in ("brain", "head_neck") else rng.uniform(1.4, 2.0)
        return (in_plane, in_plane, float(rng.choice([2.0, 2.5, 3.0, 5.0] if region != "head_neck" else [2.0, 2.5, 3.0])))
    if modality == "MRI":
        if region == "thorax":  # cine short-axis stacks: fine in plane, thick slices
            in_plane = rng.uniform(1.3, 1.8)
            return (in_plane, in_plane, rng.uniform(7.0, 10.0))
        if region == "brain" and rng.random() < 0.5:
            iso = rng.uniform(1.0, 1.5)
            return (iso, iso, iso)
        in_plane = rng.uniform(0.9, 1.6)
        return (in_plane, in_plane, rng.uniform(3.0, 6.0))
    if modality == "PET":
        in_plane = rng.uniform(3.0, 4.5)
        return (in_plane, in_plane, rng.uniform(2.0, 4.0))
    iso = rng.uniform(0.5, 1.0)
    return (iso, iso, iso)


def acquisition_for(
    modality: str,
    region: str,
    anatomy: Anatomy,
    warp: Warp,
    rng: np.random.Generator,
    spacing: float | Sequence[float] | None,
    size_mm: float | Sequence[float] | None,
    shift: DomainShift,
    model: Any,
) -> Acquisition:
    """The voxel grid this case is written on: plane, tilt, spacing and field of view."""
    if hasattr(model, "acquisition"):  # ultrasound: the probe defines the grid
        # Beam forming costs about twice the rendering per voxel, so its default grid is smaller.
        return model.acquisition(anatomy, warp, rng, spacing, shift, MAX_VOXELS if spacing else DEFAULT_MAX_VOXELS * 2 // 3)
    tilt = 0.0
    if modality == "MRI":
        tilt = 20.0 if region == "thorax" else 10.0
    elif modality == "CT" and rng.random() < 0.2:
        tilt = 6.0  # gantry tilt
    plane, direction = random_direction(rng, _PLANES[modality], tilt)
    voxel = _protocol_spacing(modality, region, rng) if spacing is None else _as_triplet(spacing)
    voxel = tuple(v * shift.spacing_factor for v in voxel)
    size = anatomy.fov_size if size_mm is None else np.asarray(_as_triplet(size_mm))
    center = anatomy.fov_center + rng.uniform(-12, 12, size=3)
    budget = DEFAULT_MAX_VOXELS if spacing is None else MAX_VOXELS
    return make_acquisition(warp.to_world(center), size, voxel, direction, plane, budget)


def _as_triplet(value: float | Sequence[float]) -> tuple[float, float, float]:
    values = np.broadcast_to(np.asarray(value, dtype=float), (3,))
    if np.any(values <= 0):
        raise ValueError(f"spacing and sizes must be positive, got {value}")
    return tuple(float(v) for v in values)
