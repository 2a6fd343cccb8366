"""Training configuration: one YAML file, validated on load, so a typo is an error and not a default.

    name: duplus-default
    seed: 0
    network: {channels: [16, 32, 64, 96, 128], conditioning: film}
    inference: {spacing: [2, 2, 2], patch_size: [48, 48, 48]}
    prompts: {code: text, paraphrases: true}
    datasets:
      - {kind: phantom, contexts: all, cases: 8, weight: 1.0}
      - {kind: mni152, cases: 6, weight: 0.5}
      - {kind: decathlon, path: /data/Task03_Liver, mapping: liver_map.json, weight: 1.0}
    training: {steps: 2000, batch_size: 2, learning_rate: 0.002}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DuPLUSError

__all__ = ["ConfigError", "DatasetSpec", "OptimisationSettings", "PromptSettings", "TrainingConfig", "load_config"]


class ConfigError(DuPLUSError, ValueError):
    """A training configuration that names something that does not exist."""


def _strict(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, not {type(values).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {where}: {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}"
        )
    return cls(**values)


if TYPE_CHECKING:
    from ..synthesis import SynthesisOption, SynthesisSettings


def _synthesis_options() -> tuple[SynthesisOption, ...]:
    """The options a synth dataset can switch on. Each came after run folders existed: off, it leaves
    the fingerprint as it was. Imported when asked, as the synthesis package brings SciPy."""
    from ..synthesis import SYNTHESIS_OPTIONS

    return SYNTHESIS_OPTIONS


@dataclass
class DatasetSpec:
    """One source of training cases.

    ``kind``: ``phantom`` (procedural, every listed context), ``mni152`` (the real MNI152 brain,
    augmented), ``decathlon`` (a Medical Segmentation Decathlon folder with a label mapping, its
    images used as they are), or ``synth`` (images synthesised from label maps, for each of
    ``modalities``: the label maps of a Decathlon folder with its mapping, or ``source: mni152``).
    """

    kind: str
    weight: float = 1.0
    cases: int = 8  # per context for phantoms; augmented copies for mni152; ignored for decathlon
    contexts: Any = "all"  # "all" or a list of "MODALITY/region"
    seed_offset: int = 0
    path: str | None = None
    mapping: str | None = None
    domain_shift: dict[str, float] | None = None  # phantoms only: a "new centre"
    modalities: list[str] | None = None  # synth only: the modalities to synthesise (default: CT, MRI, PET, US)
    source: str | None = None  # synth only: "mni152" instead of a Decathlon folder
    contrast_phases: bool = False  # synth only: CT cases in a drawn native, arterial or portal-venous phase
    in_plane_crops: bool = False  # synth only: some cases get an in-plane field of view that cuts the body
    label_contrasts: bool = False  # synth MRI only: some cases paint every label at its own random intensity
    organ_resizes: bool = False  # synth only: organs also grow or shrink by millimetres, each its own way
    strong_deformations: bool = False  # synth only: wider scaling and rotation, a larger smooth warp

    def __post_init__(self) -> None:
        if self.kind not in ("phantom", "mni152", "decathlon", "synth"):
            raise ConfigError(f"dataset kind must be phantom, mni152, decathlon or synth, not '{self.kind}'")
        if self.kind == "decathlon" and not (self.path and self.mapping):
            raise ConfigError("a decathlon dataset needs 'path' (the dataset folder) and 'mapping' (JSON)")
        if self.kind == "synth":
            if self.source not in (None, "mni152"):
                raise ConfigError(f"a synth dataset's source must be mni152 or left out, not '{self.source}'")
            if self.source is None and not (self.path and self.mapping):
                raise ConfigError("a synth dataset needs 'path' and 'mapping' (a Decathlon folder), or 'source: mni152'")
            unknown = set(self.modalities or []) - {"CT", "MRI", "PET", "US"}
            if unknown:
                raise ConfigError(f"synth modalities must be among CT, MRI, PET, US; not {', '.join(sorted(unknown))}")
            if self.contrast_phases and self.source == "mni152":
                raise ConfigError("contrast_phases changes only CT synthesised from a CT's label maps; "
                                  "drop contrast_phases from the mni152 dataset")
            for option in _synthesis_options():
                if getattr(self, option.name) and option.modality not in (None, *(self.modalities or [option.modality])):
                    raise ConfigError(f"{option.name} changes only synthesised {option.modality}; "
                                      f"add {option.modality} to 'modalities' or drop {option.name}")
        else:
            for option in _synthesis_options():
                if getattr(self, option.name):
                    raise ConfigError(f"{option.name} applies to synth datasets only, not to a {self.kind} dataset")
        if self.weight <= 0:
            raise ConfigError(f"dataset weight must be positive, not {self.weight}")

    def synthesis_settings(self, modality: str) -> SynthesisSettings:
        """The synthesis settings of this synth dataset's ``modality`` cases."""
        from ..synthesis import SynthesisSettings

        switched = {option.name: getattr(self, option.name) for option in _synthesis_options()}
        return SynthesisSettings.for_modality(modality, switched)


@dataclass(frozen=True)
class CaseSpec:
    """A recipe for one training case, made from a :class:`DatasetSpec` by ``data.case_specs``;
    small enough to send to a worker process. Here, beside the dataset specs, so the dataset
    readers (``decathlon``, ``synthetic``) need not import the case builder that calls them."""

    name: str
    dataset: int
    kind: str
    modality: str
    region: str
    seed: int
    path: str | None = None
    mapping: str | None = None
    domain_shift: tuple[tuple[str, float], ...] = ()
    entry: int = 0  # synth: which case of the Decathlon folder gives the label map
    synthesis: SynthesisSettings | None = None  # synth: how its image is drawn from the label map


@dataclass
class PromptSettings:
    code: str = "text"  # "text" (DuPLUS) or "onehot" (the ablation: a task code instead of language)
    paraphrases: bool = True  # draw one of the five target-prompt paraphrases per step

    def __post_init__(self) -> None:
        if self.code not in ("text", "onehot"):
            raise ConfigError(f"prompts.code must be text or onehot, not '{self.code}'")


@dataclass
class OptimisationSettings:
    steps: int = 2000
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 50
    ema_decay: float = 0.99
    precision: str = "auto"  # auto: bf16 autocast where the hardware has it
    foreground_fraction: float = 0.8  # patches centred on a labelled voxel
    max_prompts: int = 16
    dice_weight: float = 1.0
    bce_weight: float = 0.5
    augment: bool = True
    checkpoint_every: int = 100
    export_every: int = 0  # also write model/ (the EMA bundle, 13 MB) at these steps: 0 only at the end
    log_every: int = 10
    threads: int = 0  # 0: leave torch's default
    data_workers: int = 2  # processes that build the case cache
    loader_workers: int = 0  # processes that draw batches while the network trains (a GPU needs them)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("training.steps and training.batch_size must be at least 1")
        if self.export_every < 0:
            raise ConfigError("training.export_every must be 0 (export at the end only) or a step count")
        if self.loader_workers < 0:
            raise ConfigError("training.loader_workers must be 0 (draw batches in the training process) or more")
        if not 0 <= self.foreground_fraction <= 1:
            raise ConfigError("training.foreground_fraction must lie in [0, 1]")


@dataclass
class TrainingConfig:
    name: str
    datasets: list[DatasetSpec]
    seed: int = 0
    description: str = ""
    network: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    training: OptimisationSettings = field(default_factory=OptimisationSettings)
    text_encoder: str | None = None  # a local Hugging Face folder; None: the bundled MiniLM
    initial_model: str | None = None  # a model folder whose weights start this run (warm start)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        values = dict(values)
        if "datasets" not in values or not values["datasets"]:
            raise ConfigError("the config names no datasets")
        values["datasets"] = [_strict(DatasetSpec, d, f"datasets[{i}]") for i, d in enumerate(values["datasets"])]
        values["prompts"] = _strict(PromptSettings, values.get("prompts", {}), "prompts")
        values["training"] = _strict(OptimisationSettings, values.get("training", {}), "training")
        if "name" not in values:
            raise ConfigError("the config needs a 'name'")
        config = _strict(cls, values, "the config")
        _check_sections(config)
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Identifies the run: a run folder with another fingerprint belongs to another run.

        The step count is left out, so a finished run can be resumed with more steps; so are
        settings added since, at their defaults, so older run folders still resume.
        """
        values = self.to_dict()
        values["training"].pop("steps")
        values["training"].pop("export_every")  # when the bundle is written changes nothing trained
        values["inference"].pop("largest_component", None)  # post-processing, chosen after training
        values["inference"].pop("body_constraint", None)
        if values["training"]["loader_workers"] == 0:
            values["training"].pop("loader_workers")
        for dataset in values["datasets"]:
            for option in _synthesis_options():
                if not dataset[option.name]:
                    dataset.pop(option.name)
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _check_sections(config: TrainingConfig) -> None:
    from ..bundle import InferenceSettings
    from ..network import NetworkConfig

    try:
        NetworkConfig.from_dict(config.network)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"network: {error}") from None
    try:
        settings = InferenceSettings.from_dict(config.inference)
    except Exception as error:
        raise ConfigError(f"inference: {error}") from None
    from ..ontology import load_ontology

    unknown = settings.unknown_structures(load_ontology())
    if unknown:  # found now, not when the trained bundle is first loaded
        raise ConfigError(f"inference.largest_component: no structure of the ontology is called {', '.join(unknown)}")


def load_config(path: str | Path) -> TrainingConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config '{path}' does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config '{path}' is not a text file; give the training config (YAML)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config '{path}' is not valid YAML: {error}") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"config '{path}' must be a mapping of settings (name:, datasets:, ...), "
                          f"not a YAML {type(values).__name__}")
    return TrainingConfig.from_dict(values or {})
