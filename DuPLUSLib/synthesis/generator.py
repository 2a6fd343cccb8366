"""One synthetic training case from a source label map: geometry, then contrast, then acquisition."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..imageio import VolumeImage
from .contrast import paint
from .labelmap import SourceLabelMap
from .spatial import SpatialSettings, crop_field_of_view, crop_in_plane, deform_labels, grow_or_shrink_labels, resize_organs

__all__ = ["SYNTHESIS_OPTIONS", "SynthesisOption", "SynthesisSettings", "synthesise"]


@dataclass(frozen=True)
class SynthesisOption:
    """A switch of :class:`SynthesisSettings` that a training config sets per synth dataset."""

    name: str  # the field of SynthesisSettings, and the key of a config's dataset
    tag: str  # what it adds to the name of a case or validation set made with it
    modality: str | None  # the one modality it changes, or None for all


# In the order their tags join a name. A new option is a row here, a field of SynthesisSettings below
# and one of the training config's DatasetSpec (its key in a config file).
SYNTHESIS_OPTIONS = (
    SynthesisOption("contrast_phases", "phases", "CT"),
    SynthesisOption("label_contrasts", "labels", "MRI"),
    SynthesisOption("organ_resizes", "organs", None),
    SynthesisOption("strong_deformations", "warps", None),
    SynthesisOption("in_plane_crops", "fov", None),
)


@dataclass(frozen=True)
class SynthesisSettings:
    spatial: SpatialSettings = field(default_factory=SpatialSettings)
    contrast_phases: bool = False  # CT: native, arterial or portal-venous per case (see ``contrast.paint``)
    in_plane_crops: bool = False  # some cases get an in-plane field of view that cuts the body (``crop_in_plane``)
    label_contrasts: bool = False  # MRI: some cases paint every label at its own random intensity (SynthSeg)
    label_contrast_probability: float = 0.3  # how many MRI cases, with ``label_contrasts`` on
    organ_resizes: bool = False  # organs also grow or shrink by millimetres, each its own way (``resize_organs``)
    strong_deformations: bool = False  # SynthSeg's wider scaling and rotation, a larger smooth warp (``SpatialSettings.stronger``)

    @classmethod
    def for_modality(cls, modality: str, options: dict[str, bool]) -> SynthesisSettings:
        """The settings of a ``modality`` case from a dataset's switched ``options``; an option that
        changes another modality stays off, so two cases drawn alike are named alike."""
        return cls(**{option.name: bool(options.get(option.name)) and option.modality in (None, modality)
                      for option in SYNTHESIS_OPTIONS})

    def tags(self) -> tuple[str, ...]:
        """The tags of the options switched on, for the names of cases and validation sets (the
        probabilities of the drawn changes are not in them)."""
        return tuple(option.tag for option in SYNTHESIS_OPTIONS if getattr(self, option.name))


def synthesise(
    source: SourceLabelMap,
    modality: str,
    seed: int,
    structures: list[str] | None = None,
    settings: SynthesisSettings = SynthesisSettings(),
) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    """A ``modality`` image of a randomly deformed and cropped copy of ``source``, and the masks of
    ``structures`` (default: every structure ``source`` annotates) on that image's voxels.

    Deterministic per ``seed``: the same seed gives the same image and masks.
    """
    rng = np.random.default_rng([seed, _modality_index(modality)])
    keys = list(source.structures) if structures is None else structures
    fill = next(v for v in source.values if source.family[v] == "air") if "air" in source.family.values() else 0
    # the same draws, scaled: every other draw of the case is the one it has without
    warp = settings.spatial.stronger() if settings.strong_deformations else settings.spatial
    labels = deform_labels(source.labels, rng, warp, fill)
    annotated_values = sorted({v for k in keys for v in source.structures[k]})
    background = {v for v in source.values if v not in {x for vs in source.structures.values() for x in vs}}
    resized = grow_or_shrink_labels(labels.array, annotated_values, background, rng, settings.spatial.organ_resize_probability)
    if settings.organ_resizes:  # its own random stream, as the crops'
        resize_rng = np.random.default_rng([seed, _modality_index(modality), 3])
        resized = resize_organs(resized, np.array(labels.spacing)[::-1], annotated_values, background, resize_rng, settings.spatial)
    labels = labels.with_array(resized)
    labels = crop_field_of_view(labels, np.isin(labels.array, annotated_values), rng, settings.spatial)
    if settings.in_plane_crops:  # its own random stream: every other draw of the case is the one it has without
        crop_rng = np.random.default_rng([seed, _modality_index(modality), 1])
        labels = crop_in_plane(labels, np.isin(labels.array, annotated_values), crop_rng, settings.spatial)
    spacing_kji = np.array(labels.spacing)[::-1]
    label_contrast = None
    if settings.label_contrasts and modality == "MRI":  # its own stream too, for the same reason
        contrast_rng = np.random.default_rng([seed, _modality_index(modality), 2])
        if contrast_rng.random() < settings.label_contrast_probability:
            label_contrast = contrast_rng
    image = paint(source, labels.array.astype(np.int64), spacing_kji, modality, rng,
                  contrast_phases=settings.contrast_phases, label_contrast=label_contrast)
    masks = {key: np.isin(labels.array, source.structures[key]) for key in keys}
    out = labels.with_array(image.astype(np.float32))
    out.metadata = {"DuPLUS.Synthetic": f"{source.name}/{modality}/{seed}"}
    return out, masks


def _modality_index(modality: str) -> int:
    return {"CT": 0, "MRI": 1, "PET": 2, "US": 3}.get(modality, 9)
