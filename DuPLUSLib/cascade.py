"""What the Segment module's cascading dropdowns offer, and the guesses that pre-fill them.

The module's GUI is modality -> region -> a checkable list of structures, plus a free-text prompt.
All of its choices and checks live here, in plain Python over the ontology, so they are tested
without Qt and the widget only copies lists into combo boxes:

* :func:`modality_choices`, :func:`region_choices`, :func:`structure_choices` fill the dropdowns;
* :func:`compose` turns what the user ticked and typed into validated, parsed prompts;
* :func:`guess_modality` / :func:`guess_region` suggest a modality and region from the volume's
  DICOM tags, or failing those from its intensity range (a suggestion only: the user decides);
* :func:`missing_for_segment` says why the Segment button is disabled, for its tooltip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import UnknownPromptError
from .ontology import Ontology, Prompt, load_ontology

__all__ = [
    "ALL_OF_REGION",
    "Choice",
    "ModalityGuess",
    "compose",
    "guess_modality",
    "guess_region",
    "missing_for_segment",
    "modality_choices",
    "region_choices",
    "split_free_text",
    "structure_choices",
]

ALL_OF_REGION = "*"

# DICOM Modality (0008,0060) -> ontology modality. NM is left out on purpose: SPECT is not PET.
DICOM_MODALITIES = {"CT": "CT", "MR": "MRI", "PT": "PET", "US": "US"}

# DICOM BodyPartExamined (0018,0015) values seen in practice -> ontology region.
DICOM_BODY_PARTS = {
    "BRAIN": "brain",
    "HEAD": "brain",
    "SKULL": "brain",
    "HEADNECK": "head_neck",
    "HEAD_NECK": "head_neck",
    "NECK": "head_neck",
    "LARYNX": "head_neck",
    "CHEST": "thorax",
    "THORAX": "thorax",
    "LUNG": "thorax",
    "HEART": "thorax",
    "ABDOMEN": "abdomen",
    "LIVER": "abdomen",
    "KIDNEY": "abdomen",
    "PANCREAS": "abdomen",
    "PELVIS": "pelvis",
    "PROSTATE": "pelvis",
    "BLADDER": "pelvis",
}


@dataclass(frozen=True)
class Choice:
    """One entry of a dropdown or checklist: the key the logic uses and the text the user reads."""

    key: str
    label: str
    tooltip: str = ""
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ModalityGuess:
    """A suggested modality (None when nothing can be said) and why, to show beside the dropdown."""

    modality: str | None
    reason: str


# --------------------------------------------------------------------------------- the dropdowns
def modality_choices(ontology: Ontology | None = None) -> list[Choice]:
    """Every modality that has at least one region, in ontology order."""
    ontology = ontology or load_ontology()
    return [
        Choice(key, key, ontology.modalities[key].get("description", ontology.modalities[key]["name"]))
        for key in ontology.hierarchy
    ]


def region_choices(modality: str, ontology: Ontology | None = None) -> list[Choice]:
    """The regions the modality offers; an unknown modality is an :class:`UnknownPromptError`."""
    ontology = ontology or load_ontology()
    modality = ontology.modality_key(modality)
    return [
        Choice(region, ontology.regions[region]["name"], f"{modality} {ontology.regions[region]['name']}")
        for region in ontology.regions_of(modality)
    ]


def structure_choices(modality: str, region: str, ontology: Ontology | None = None) -> list[Choice]:
    """The structures valid in this modality and region, with their display colour."""
    ontology = ontology or load_ontology()
    modality = ontology.modality_key(modality)
    region = ontology.region_key(region, modality)
    choices = []
    for key in ontology.structures_of(modality, region):
        structure = ontology.structures[key]
        synonyms = f" (also: {', '.join(structure.synonyms)})" if structure.synonyms else ""
        choices.append(Choice(key, structure.name, f"{modality}/{region}/{key}{synonyms}", structure.color))
    return choices


# ------------------------------------------------------------------------------- the prompt itself
def split_free_text(text: str) -> list[str]:
    """Split a free-text prompt on commas, semicolons and line breaks; drop empty parts."""
    return [part.strip() for part in re.split(r"[,;\n]+", text or "") if part.strip()]


def compose(
    modality: str | None,
    region: str | None,
    structures: Iterable[str] = (),
    free_text: str = "",
    all_of_region: bool = False,
    ontology: Ontology | None = None,
) -> list[Prompt]:
    """The parsed prompts for what the user ticked and typed, in order, once each.

    Ticked structures are read in the chosen modality and region; free text may be full prompts
    (``MRI/brain/white matter``), ``REGION/STRUCTURE`` or bare structure names, which take the
    chosen modality (and region, where the structure lies in several). Anything unknown raises
    :class:`UnknownPromptError` with the valid choices, before any work starts. The Slicer module
    parses here once and passes the :class:`Prompt` objects on.
    """
    ontology = ontology or load_ontology()
    texts: list[str] = []
    if all_of_region:
        if not (modality and region):
            raise UnknownPromptError("'all of this region' needs a modality and a region")
        texts.append(f"{modality}/{region}/{ALL_OF_REGION}")
    texts.extend(f"{modality}/{region}/{key}" for key in structures if not all_of_region)
    prompts = ontology.parse_many(texts) if texts else []
    for text in split_free_text(free_text):
        parts = text.split("/")
        if len(parts) == 3:
            prompts.extend(ontology.parse(text))
        elif len(parts) == 2:
            prompts.extend(ontology.parse(text, modality=modality))
        else:
            try:
                prompts.extend(ontology.parse(text, modality=modality))
            except UnknownPromptError:
                if region is None:
                    raise
                prompts.extend(ontology.parse(text, modality=modality, region=region))
    return ontology.parse_many(prompts)  # repeats dropped, a structure asked for twice refused


# ------------------------------------------------------------------------------------ the guesses
def guess_modality(
    dicom_modality: str | None = None,
    array: np.ndarray | None = None,
) -> ModalityGuess:
    """Suggest a modality from the DICOM Modality tag, else from the voxel values.

    The intensity rules are coarse on purpose and say so in ``reason``: CT holds air near -1000 HU;
    8-bit data from 0 to 255 is most likely B-mode ultrasound; small non-negative floats look like
    PET uptake values; other non-negative data is most likely MRI.
    """
    if dicom_modality:
        code = dicom_modality.strip().upper()
        if code in DICOM_MODALITIES:
            return ModalityGuess(DICOM_MODALITIES[code], f"DICOM Modality is {code}")
        return ModalityGuess(None, f"DICOM Modality {code} is not one DuPLUS segments; choose one")
    if array is None or array.size == 0:
        return ModalityGuess(None, "no volume to look at")
    values = np.asarray(array)
    sample = values.ravel()[:: max(1, values.size // 200_000)]
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    minimum = float(sample.min())
    if minimum <= -500:
        return ModalityGuess("CT", f"intensities reach {minimum:.0f} (air in Hounsfield units)")
    if minimum >= 0 and values.dtype == np.uint8:
        return ModalityGuess("US", "8-bit intensities from 0 to 255, as ultrasound B-mode")
    if minimum >= 0 and np.issubdtype(values.dtype, np.floating) and high < 60:
        return ModalityGuess("PET", f"small non-negative values (99.5th percentile {high:.1f}), as PET SUV")
    if minimum >= 0:
        return ModalityGuess("MRI", f"non-negative intensities up to {high:.0f}, as MRI")
    return ModalityGuess(None, f"intensities from {low:.0f} to {high:.0f} fit no modality clearly; choose one")


def guess_region(body_part_examined: str | None, modality: str | None = None, ontology: Ontology | None = None) -> str | None:
    """The region a DICOM BodyPartExamined value names, if the modality offers it; else None."""
    if not body_part_examined:
        return None
    region = DICOM_BODY_PARTS.get(body_part_examined.strip().upper().replace(" ", ""))
    if region is None or modality is None:
        return region
    ontology = ontology or load_ontology()
    return region if region in ontology.hierarchy.get(modality, {}) else None


# ----------------------------------------------------------------------------- the apply button
def missing_for_segment(
    volume_error: str | None,
    prompts: Sequence[str],
    prompt_error: str | None,
    busy: bool = False,
) -> list[str]:
    """What stands between the user and a Segment click; empty when the button may be enabled.

    ``volume_error`` is the message from checking the selected input (None when it is fine),
    ``prompt_error`` the message from :func:`compose` (None when it parsed).
    """
    missing = []
    if busy:
        missing.append("a segmentation is running; wait for it or cancel it")
    if volume_error:
        missing.append(volume_error)
    if prompt_error:
        missing.append(prompt_error)
    elif not prompts:
        missing.append("no structure chosen: tick at least one structure or type a prompt")
    return missing
