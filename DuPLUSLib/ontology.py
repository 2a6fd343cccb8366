"""The prompt ontology: modality > region > structure, with terminology, colours and prompt text.

Everything that names a structure (the command line, the Slicer dropdowns, the phantom generator,
training and the `.seg.nrrd` writer) reads it from here, so a structure is spelled one way in one
place: ``resources/ontology.json``.

A prompt is written ``MODALITY/REGION/STRUCTURE`` (``CT/abdomen/liver``); ``*`` as the structure
means every structure of that region; names are matched case-insensitively against keys, display
names and synonyms, so ``ct/Abdomen/Liver Tumor`` works too.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Sequence

from .errors import UnknownPromptError

__all__ = [
    "Ontology",
    "Prompt",
    "Structure",
    "Terminology",
    "UnknownPromptError",
    "load_ontology",
]


@dataclass(frozen=True)
class Code:
    """One coded concept, as DICOM writes it: (CodingSchemeDesignator, CodeValue, CodeMeaning)."""

    scheme: str
    value: str
    meaning: str

    @classmethod
    def from_list(cls, triple: Sequence[str] | None) -> "Code | None":
        return None if not triple else cls(*triple)

    def as_slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class Terminology:
    """Slicer's terminology entry for a segment: category, type, optional modifier and region."""

    category: Code
    type: Code
    modifier: Code | None = None
    anatomic_region: Code | None = None

    def as_slicer_tag(self) -> str:
        """The ``TerminologyEntry`` tag string Slicer stores in segment tags and `.seg.nrrd` headers."""

        def code(c: Code | None) -> str:
            return c.as_slicer() if c else "^^"

        return "~".join(
            [
                "Segmentation category and type - 3D Slicer General Anatomy list",
                code(self.category),
                code(self.type),
                code(self.modifier),
                "Anatomic codes - DICOM master list",
                code(self.anatomic_region),
                "^^",
            ]
        )


@dataclass(frozen=True)
class Structure:
    key: str
    name: str
    kind: str  # "organ" or "tumour"
    synonyms: tuple[str, ...]
    color: tuple[int, int, int]
    terminology: Terminology

    @property
    def color_float(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]


@dataclass(frozen=True)
class Prompt:
    """A resolved, valid prompt: one structure in one modality and region."""

    modality: str
    region: str
    structure: str

    @property
    def key(self) -> str:
        return f"{self.modality}/{self.region}/{self.structure}"

    def __str__(self) -> str:
        return self.key


def _normalise(text: str) -> str:
    text = text.strip().lower().replace("_", " ").replace("-", " ")
    return re.sub(r"\s+", " ", text)


class Ontology:
    """The hierarchy and its prompt text. Use :func:`load_ontology` for the bundled one."""

    def __init__(self, document: dict[str, Any]):
        self.version: str = document["version"]
        self.modalities: dict[str, dict[str, Any]] = document["modalities"]
        self.regions: dict[str, dict[str, Any]] = document["regions"]
        self.hierarchy: dict[str, dict[str, list[str]]] = document["hierarchy"]
        self.templates: dict[str, Any] = document["prompt_templates"]
        self.structures: dict[str, Structure] = {
            key: _structure_from_json(key, entry) for key, entry in document["structures"].items()
        }
        self._check_consistency()
        self._modality_names = self._name_index({k: v for k, v in self.modalities.items()})
        self._region_names = self._name_index({k: v for k, v in self.regions.items()})
        self._structure_names = self._name_index(
            {k: {"name": s.name, "synonyms": s.synonyms} for k, s in self.structures.items()}
        )

    # ----------------------------------------------------------------- structure of the hierarchy
    def structures_of(self, modality: str, region: str) -> list[str]:
        return list(self.hierarchy[modality][region])

    def regions_of(self, modality: str) -> list[str]:
        return list(self.hierarchy[modality])

    def all_prompts(self) -> list[Prompt]:
        return [
            Prompt(m, r, s)
            for m, regions in self.hierarchy.items()
            for r, structures in regions.items()
            for s in structures
        ]

    def contexts(self) -> list[tuple[str, str]]:
        return [(m, r) for m, regions in self.hierarchy.items() for r in regions]

    def listing(self, modalities: Iterable[str] | None = None) -> dict[str, Any]:
        """The hierarchy and each structure's names, colour and terminology, as JSON-ready data
        (what ``duplus prompts --json`` prints and the server's ``/v1/ontology`` answers)."""
        modalities = list(self.hierarchy) if modalities is None else list(modalities)
        return {
            "version": self.version,
            "hierarchy": {m: self.hierarchy[m] for m in modalities},
            "structures": {
                key: {"name": s.name, "synonyms": list(s.synonyms), "color": list(s.color),
                      "terminology": s.terminology.as_slicer_tag()}
                for key, s in self.structures.items()
            },
        }

    # ----------------------------------------------------------------------------------- parsing
    def modality_key(self, text: str) -> str:
        return self._lookup(text, self._modality_names, "modality", list(self.modalities))

    def region_key(self, text: str, modality: str | None = None) -> str:
        choices = self.regions_of(modality) if modality else list(self.regions)
        key = self._lookup(text, self._region_names, "region", choices)
        if key not in choices:
            raise UnknownPromptError(
                f"'{text}' is not a region of {modality}; choose one of: {', '.join(choices)}"
            )
        return key

    def structure_key(self, text: str) -> str:
        return self._lookup(text, self._structure_names, "structure", list(self.structures))

    def parse(
        self, text: str, modality: str | None = None, region: str | None = None
    ) -> list[Prompt]:
        """Turn one user prompt into the prompts it means.

        ``CT/abdomen/liver`` gives one prompt, ``MRI/brain/*`` all of that region, ``liver`` needs
        the modality from ``modality=`` (and the region where the structure is valid in several).
        Raises :class:`UnknownPromptError` naming the valid choices.
        """
        parts = [p for p in (part.strip() for part in text.split("/"))]
        if not text.strip() or any(not p for p in parts):
            raise UnknownPromptError(
                f"empty prompt part in '{text}'; write MODALITY/REGION/STRUCTURE, e.g. CT/abdomen/liver"
            )
        if len(parts) > 3:
            raise UnknownPromptError(
                f"'{text}' has {len(parts)} parts; write MODALITY/REGION/STRUCTURE, e.g. CT/abdomen/liver"
            )
        if len(parts) == 3:
            modality, region, structure = parts
        elif len(parts) == 2:
            region, structure = parts
        else:
            (structure,) = parts
        if modality is None:
            raise UnknownPromptError(
                f"'{text}' names no modality; write it as MODALITY/REGION/STRUCTURE with a modality "
                f"from: {', '.join(self.modalities)}"
            )
        modality = self.modality_key(modality)
        if region is not None:
            region = self.region_key(region, modality)
        if structure == "*":
            if region is None:
                raise UnknownPromptError(
                    f"'*' needs a region; choose one of: {', '.join(self.regions_of(modality))}"
                )
            return [Prompt(modality, region, s) for s in self.structures_of(modality, region)]
        try:
            key = self.structure_key(structure)
        except UnknownPromptError:
            if region is None:
                raise
            raise UnknownPromptError(
                f"'{structure}' is not a structure of {modality} {self.regions[region]['name']}; "
                f"choose one of: {', '.join(self.structures_of(modality, region))}"
            ) from None
        if region is not None:
            valid = self.structures_of(modality, region)
            if key not in valid:
                raise UnknownPromptError(
                    f"'{structure}' is not a structure of {modality} {self.regions[region]['name']}; "
                    f"choose one of: {', '.join(valid)}"
                )
            return [Prompt(modality, region, key)]
        regions = [r for r in self.regions_of(modality) if key in self.hierarchy[modality][r]]
        if not regions:
            raise UnknownPromptError(
                f"'{structure}' is not valid for {modality}; {modality} offers: "
                + "; ".join(f"{r}: {', '.join(s)}" for r, s in self.hierarchy[modality].items())
            )
        if len(regions) > 1:
            raise UnknownPromptError(
                f"'{structure}' is ambiguous in {modality}: it lies in {', '.join(regions)}; "
                f"write {modality}/REGION/{key} with one of those regions"
            )
        return [Prompt(modality, regions[0], key)]

    def parse_many(
        self, texts: Iterable[str | Prompt], modality: str | None = None, region: str | None = None
    ) -> list[Prompt]:
        """Parse several prompts, dropping repeats but keeping their order.

        :class:`Prompt` objects, already parsed, pass through as they are: parse user text once, at
        the entry point, and hand the parsed prompts on. One structure asked for in two regions
        (``CT/thorax/*`` and ``CT/abdomen/*`` both hold the aorta) is refused: a segmentation holds
        one segment, one file, per structure, so one of the two results would be lost.
        """
        seen: dict[str, Prompt] = {}
        for text in texts:
            for prompt in [text] if isinstance(text, Prompt) else self.parse(text, modality, region):
                seen.setdefault(prompt.key, prompt)
        by_structure: dict[str, Prompt] = {}
        for prompt in seen.values():
            first = by_structure.setdefault(prompt.structure, prompt)
            if first is not prompt:
                raise UnknownPromptError(
                    f"'{prompt.structure}' is asked for twice ({first.key} and {prompt.key}), but a "
                    "segmentation holds one segment per structure; ask for it in one region (list the other "
                    "region's structures instead of '*'), or segment each region into its own output"
                )
        return list(seen.values())

    # ------------------------------------------------------------------------------- prompt text
    def context_text(self, modality: str, region: str) -> str:
        """T1 of DuPLUS: one sentence per modality and region."""
        return self.templates["context"].format(
            modality=self.modalities[modality]["phrase"], region=self.regions[region]["name"]
        )

    def target_texts(self, prompt: Prompt) -> list[str]:
        """T2 of DuPLUS: every paraphrase of the target prompt; the first is the canonical one."""
        modality = self.modalities[prompt.modality]
        structure = self.structures[prompt.structure].name
        texts = [
            template.format(
                modality=modality["phrase"],
                modality_short=prompt.modality if prompt.modality != "US" else "ultrasound",
                structure=structure,
            )
            for template in self.templates["target"]
        ]
        return [t[0].upper() + t[1:] for t in texts]

    def target_text(self, prompt: Prompt, rng: random.Random | None = None) -> str:
        """The canonical target sentence, or a random paraphrase when ``rng`` is given (training)."""
        texts = self.target_texts(prompt)
        return rng.choice(texts) if rng else texts[0]

    def all_texts(self) -> list[str]:
        """Every sentence the ontology can produce: what a model bundle caches embeddings for."""
        texts = [self.context_text(m, r) for m, r in self.contexts()]
        for prompt in self.all_prompts():
            texts.extend(self.target_texts(prompt))
        return sorted(set(texts))

    # ---------------------------------------------------------------------------------- internals
    def _name_index(self, entries: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
        index: dict[str, set[str]] = {}
        for key, entry in entries.items():
            for name in [key, entry.get("name", key), *entry.get("synonyms", ())]:
                index.setdefault(_normalise(name), set()).add(key)
        return index

    @staticmethod
    def _lookup(text: str, index: dict[str, set[str]], what: str, choices: list[str]) -> str:
        keys = index.get(_normalise(text), set())
        if len(keys) == 1:
            return next(iter(keys))
        if len(keys) > 1:
            raise UnknownPromptError(
                f"'{text}' is an ambiguous {what}: it may mean {', '.join(sorted(keys))}"
            )
        raise UnknownPromptError(f"'{text}' is not a known {what}; choose one of: {', '.join(choices)}")

    def _check_consistency(self) -> None:
        for modality, regions in self.hierarchy.items():
            if modality not in self.modalities:
                raise ValueError(f"ontology: hierarchy names unknown modality '{modality}'")
            for region, structures in regions.items():
                if region not in self.regions:
                    raise ValueError(f"ontology: hierarchy names unknown region '{region}'")
                for key in structures:
                    if key not in self.structures:
                        raise ValueError(f"ontology: {modality}/{region} names unknown structure '{key}'")


def _structure_from_json(key: str, entry: dict[str, Any]) -> Structure:
    term = entry["terminology"]
    return Structure(
        key=key,
        name=entry["name"],
        kind=entry["kind"],
        synonyms=tuple(entry["synonyms"]),
        color=tuple(entry["color"]),  # type: ignore[arg-type]
        terminology=Terminology(
            category=Code.from_list(term["category"]),  # type: ignore[arg-type]
            type=Code.from_list(term["type"]),  # type: ignore[arg-type]
            modifier=Code.from_list(term.get("modifier")),
            anatomic_region=Code.from_list(term.get("anatomicRegion")),
        ),
    )


@lru_cache(maxsize=1)
def load_ontology() -> Ontology:
    """The ontology shipped with the library."""
    text = resources.files("DuPLUSLib").joinpath("resources/ontology.json").read_text("utf-8")
    return Ontology(json.loads(text))
