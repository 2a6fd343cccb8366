"""Training cases synthesised from label maps (``kind: synth`` in a training config).

The recipes are made here in the main process, where a wrong path or a modality without any
structure of the mapping fails at once; each worker process then loads its label map once
(cached) and synthesises its cases from it.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..imageio import VolumeImage
from ..ontology import Ontology
from ..synthesis import SourceLabelMap, SynthesisSettings, label_map_from_mni152, label_map_from_real_ct, synthesise
from .config import ConfigError, DatasetSpec
from .config import CaseSpec

__all__ = ["synthetic_case_specs", "load_synthetic_case"]

DEFAULT_MODALITIES = ("CT", "MRI", "PET", "US")


def synthetic_case_specs(dataset: DatasetSpec, index: int, seed: int, ontology: Ontology) -> list[CaseSpec]:
    """``dataset.cases`` recipes per label map and modality."""
    modalities = list(dataset.modalities or DEFAULT_MODALITIES)
    if dataset.source == "mni152":
        sources = [("mni152", "brain", None, None, 0, ["brain", "grey_matter", "white_matter"])]
    else:
        from .decathlon import load_mapping, read_dataset_json

        mapping = load_mapping(dataset.mapping, ontology)  # type: ignore[arg-type]
        if dataset.contrast_phases and mapping.ignore and not mapping.unannotated:
            warnings.warn(
                f"synth dataset {index}: mapping '{dataset.mapping}' names none of its ignored values, so with "
                "contrast_phases they are painted as tissue by their HU (an unannotated artery stays dark in the "
                "arterial phase); name them under 'unannotated' (duplus data get writes them for its datasets)",
                UserWarning, stacklevel=2)
        entries = read_dataset_json(dataset.path)  # type: ignore[arg-type]
        sources = [(entry.name, mapping.region, str(Path(dataset.path).resolve()),  # type: ignore[arg-type]
                    str(Path(dataset.mapping).resolve()), entry.index, list(mapping.structures))  # type: ignore[arg-type]
                   for entry in entries]
    specs = []
    for name, region, path, mapping_path, entry, structures in sources:
        for modality in modalities:
            synthesis = dataset.synthesis_settings(modality)
            if region not in ontology.regions_of(modality) or not set(structures) & set(ontology.structures_of(modality, region)):
                raise ConfigError(
                    f"synth dataset {index} ({name}): no structure it annotates is a prompt of {modality} {region}; "
                    "drop that modality from 'modalities'"
                )
            for case in range(dataset.cases):
                case_seed = seed * 100_003 + dataset.seed_offset + case
                case_name = "-".join((f"d{index}-synth-{name}-{modality}-{case_seed}", *synthesis.tags()))
                specs.append(CaseSpec(case_name, index, "synth", modality, region, case_seed, path=path,
                                      mapping=mapping_path, entry=entry, synthesis=synthesis))
    return specs


def load_synthetic_case(spec: CaseSpec) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    """The synthesised image and the masks of the structures its modality and region prompt for."""
    from ..ontology import load_ontology

    source = _source(spec.path, spec.mapping, spec.entry)
    wanted = set(load_ontology().structures_of(spec.modality, spec.region))
    structures = [key for key in source.structures if key in wanted]
    return synthesise(source, spec.modality, spec.seed, structures, spec.synthesis or SynthesisSettings())


@lru_cache(maxsize=4)
def _source(path: str | None, mapping_path: str | None, entry: int) -> SourceLabelMap:
    if path is None:
        return label_map_from_mni152()
    from .decathlon import load_entry, load_mapping, read_dataset_json

    mapping = load_mapping(mapping_path)  # type: ignore[arg-type]
    item = read_dataset_json(path)[entry]
    image, _ = load_entry(item, mapping)  # checks geometry and that every value is mapped
    from .decathlon import _read_volume

    labels = image.with_array(_read_volume(item.label, None, "label").array)
    image, labels = _no_finer_than(image, labels, SYNTHESIS_SPACING_MM)
    return label_map_from_real_ct(item.name, image, labels.array, mapping.structures, mapping.region, mapping.unannotated)


SYNTHESIS_SPACING_MM = 2.0  # finer than any model grid, and a 0.6 mm CT would take minutes per case


def _no_finer_than(image: VolumeImage, labels: VolumeImage, spacing_mm: float) -> tuple[VolumeImage, VolumeImage]:
    """A finely sampled scan and its labels on a grid of at least ``spacing_mm`` per axis."""
    if min(image.spacing) >= spacing_mm:
        return image, labels
    from ..preprocessing import canonical_grid, resample_onto

    grid = canonical_grid(image, tuple(max(s, spacing_mm) for s in image.spacing))
    coarse_image = grid.with_array(resample_onto(image, grid, "linear"))
    coarse_labels = grid.with_array(resample_onto(labels, grid, "nearest", 0.0).astype(np.int16))
    return coarse_image, coarse_labels
