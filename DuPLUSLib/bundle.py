"""A model is a folder, like a MONAI bundle: config, safetensors weights, cached prompt embeddings.

    model/
      config.json                     architecture, preprocessing, ontology and text-encoder ids,
                                      file names with their sha256, training provenance
      model.safetensors               network weights (never pickle: loading runs no code)
      prompt_embeddings.safetensors   the embedding of every ontology sentence
      MODEL_CARD.md                   what it was trained on, how well it does, what not to use it for

Every file's sha256 is checked before use, and a config that points outside its folder is refused,
so a model folder from elsewhere can neither run code nor read files beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .errors import ModelBundleError
from .network import DuPLUSNet, NetworkConfig
from .ontology import Ontology, load_ontology
from .preprocessing import DEFAULT_NORMALISATION, IntensityNormalisation
from .text import DEFAULT_TEXT_ENCODER_ID, PromptEmbeddings, TextEncoder

__all__ = [
    "BUNDLE_FORMAT",
    "BundleConfig",
    "InferenceSettings",
    "ModelBundle",
    "default_model_dir",
    "load_bundle",
    "sha256_of",
]

BUNDLE_FORMAT = "duplus-bundle/1"
WEIGHTS_FILE = "model.safetensors"
EMBEDDINGS_FILE = "prompt_embeddings.safetensors"
BODY_CONSTRAINT_MODALITIES = frozenset({"CT"})  # the modalities body_region can find a body in


@dataclass
class InferenceSettings:
    """The grid and window the model was trained for, its threshold and post-processing; stored
    with it, the window settings overridable per run."""

    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    patch_size: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.5
    window_batch: int = 2
    threshold: float = 0.5
    largest_component: tuple[str, ...] = ()  # structures kept as their largest connected part (postprocessing.py)
    body_constraint: tuple[str, ...] = ()  # modalities whose predictions are cut to the body region (body_region.py)
    normalisation: dict[str, IntensityNormalisation] = field(default_factory=lambda: dict(DEFAULT_NORMALISATION))

    def unknown_structures(self, ontology: Ontology) -> list[str]:
        """The names in ``largest_component`` that are no structure of ``ontology``."""
        return [key for key in self.largest_component if key not in ontology.structures]

    def to_dict(self) -> dict:
        values = asdict(self)
        values["normalisation"] = {m: n.to_dict() for m, n in self.normalisation.items()}
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "InferenceSettings":
        values = dict(values)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelBundleError(f"unknown inference setting(s): {', '.join(sorted(unknown))}")
        if "normalisation" in values:
            values["normalisation"] = {
                m: IntensityNormalisation(**n) for m, n in values["normalisation"].items()
            }
        names = values.get("largest_component", [])
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ModelBundleError(f"inference.largest_component must be a list of structure keys, not {names!r}")
        modalities = values.get("body_constraint", [])
        if not isinstance(modalities, (list, tuple)) or not set(modalities) <= BODY_CONSTRAINT_MODALITIES:
            raise ModelBundleError(
                f"inference.body_constraint must be a list of modalities among {sorted(BODY_CONSTRAINT_MODALITIES)} "
                f"(the body is found from calibrated units), not {modalities!r}"
            )
        for key in ("spacing", "patch_size", "largest_component", "body_constraint"):
            if key in values:
                values[key] = tuple(values[key])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values that would fail or mislead only at the first window (or never): a grid
        or window that is not three positive sizes, an overlap of a whole window (no progress),
        a threshold no probability can cross, an unknown normalisation mode."""
        problems = []
        if len(self.spacing) != 3 or not all(isinstance(v, (int, float)) and v > 0 for v in self.spacing):
            problems.append(f"spacing must be three sizes in mm above 0, not {list(self.spacing)}")
        if len(self.patch_size) != 3 or not all(isinstance(v, int) and v > 0 for v in self.patch_size):
            problems.append(f"patch_size must be three whole numbers of voxels above 0, not {list(self.patch_size)}")
        if not 0.0 <= self.overlap < 1.0:
            problems.append(f"overlap must be at least 0 and below 1 (a share of the window), not {self.overlap}")
        if not (isinstance(self.window_batch, int) and self.window_batch >= 1):
            problems.append(f"window_batch must be a whole number of at least 1, not {self.window_batch}")
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold must lie between 0 and 1 (a probability), not {self.threshold}")
        for modality, normalisation in self.normalisation.items():
            if normalisation.mode not in ("window", "zscore"):
                problems.append(f"normalisation.{modality}.mode must be 'window' or 'zscore', not {normalisation.mode!r}")
            if not normalisation.high > normalisation.low:
                problems.append(f"normalisation.{modality}: high ({normalisation.high}) must be above low ({normalisation.low})")
        if problems:
            raise ModelBundleError("invalid inference settings: " + "; ".join(problems))


def _check_network_fits_settings(network: NetworkConfig, settings: InferenceSettings) -> None:
    """Every modality the network takes needs a normalisation, and the window must be a size the
    network can halve at each stage; otherwise the first segmentation fails (a KeyError, a shape error)."""
    missing = [m for m in network.modalities if m not in settings.normalisation]
    if missing:
        raise ModelBundleError(
            f"inference.normalisation has no entry for {', '.join(missing)}, which the network takes; "
            "add one per modality (a block listing some modalities replaces the defaults, it does not add to them)"
        )
    bad = [s for s in settings.patch_size if s % network.size_multiple]
    if bad:
        raise ModelBundleError(
            f"inference.patch_size {list(settings.patch_size)} must be multiples of {network.size_multiple} "
            f"for a network of {len(network.channels)} stages"
        )


@dataclass
class BundleConfig:
    name: str
    network: NetworkConfig
    inference: InferenceSettings
    ontology_version: str
    text_encoder: dict[str, Any] = field(default_factory=lambda: {"id": DEFAULT_TEXT_ENCODER_ID, "path": None})
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    weights_dtype: str = "float16"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT

    def to_dict(self) -> dict:
        values = asdict(self)
        values["network"] = self.network.to_dict()
        values["inference"] = self.inference.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "BundleConfig":
        if not isinstance(values, dict):
            raise ModelBundleError(f"config.json must hold an object, not {type(values).__name__}")
        values = dict(values)
        if values.get("format") != BUNDLE_FORMAT:
            raise ModelBundleError(
                f"unsupported model format {values.get('format')!r}; this version reads {BUNDLE_FORMAT}"
            )
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelBundleError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        try:
            network = dict(values["network"])
            # bundles written before the head was normalised record no such key, and were trained without it
            network.setdefault("head_normalisation", False)
            values["network"] = NetworkConfig.from_dict(network)
        except (TypeError, ValueError, KeyError) as error:
            raise ModelBundleError(f"invalid network config: {error}") from None
        if not isinstance(values.get("inference"), dict):
            raise ModelBundleError("config.json: 'inference' must be an object")
        values["inference"] = InferenceSettings.from_dict(values["inference"])
        _check_network_fits_settings(values["network"], values["inference"])
        if not isinstance(values.get("ontology_version"), str):
            raise ModelBundleError("config.json: 'ontology_version' must be a string such as \"1.0.0\"")
        files = values.get("files", {})
        if not isinstance(files, dict) or not all(
            isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("path", "sha256"))
            for entry in files.values()
        ):
            raise ModelBundleError("config.json: 'files' must map each role to {\"path\": str, \"sha256\": str}")
        return cls(**values)


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_dir() -> Path:
    """The model shipped inside the library (trained by ``duplus train configs/default.yaml``)."""
    return Path(str(resources.files("DuPLUSLib").joinpath("resources/models/default")))


@dataclass
class ModelBundle:
    path: Path | None
    config: BundleConfig
    network: DuPLUSNet
    embeddings: PromptEmbeddings
    ontology: Ontology

    # ------------------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike[str], card: str | None = None) -> Path:
        """Write the bundle; the sha256 of each file goes into config.json."""
        from .imageio import save_tensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dtype = getattr(torch, self.config.weights_dtype)
        state = {
            name: (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous().cpu()
            for name, tensor in self.network.state_dict().items()
        }
        save_tensors(state, folder / WEIGHTS_FILE, metadata={"format": BUNDLE_FORMAT})
        self.embeddings.save(folder / EMBEDDINGS_FILE)
        self.config.files = {
            "weights": {"path": WEIGHTS_FILE, "sha256": sha256_of(folder / WEIGHTS_FILE)},
            "prompt_embeddings": {"path": EMBEDDINGS_FILE, "sha256": sha256_of(folder / EMBEDDINGS_FILE)},
        }
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        if card is not None:
            (folder / "MODEL_CARD.md").write_text(card, encoding="utf-8")
        self.path = folder
        return folder

    def text_encoder_factory(self):
        """Encodes sentences outside the cache; a one-hot (ablation) model has no language to encode."""
        if self.config.text_encoder.get("id") == "onehot":
            return None
        path = self.config.text_encoder.get("path")
        return lambda: TextEncoder(path)


def _verified_file(folder: Path, config: BundleConfig, role: str) -> Path:
    entry = config.files.get(role)
    if not entry or "path" not in entry or "sha256" not in entry:
        raise ModelBundleError(f"model '{folder}': config.json lists no {role} file with its sha256")
    path = (folder / entry["path"]).resolve()
    if folder.resolve() not in path.parents:
        raise ModelBundleError(
            f"model '{folder}': {role} path {entry['path']!r} points outside the model folder; refused"
        )
    if not path.is_file():
        raise ModelBundleError(f"model '{folder}': {role} file '{entry['path']}' is missing")
    if sha256_of(path) != entry["sha256"]:
        raise ModelBundleError(
            f"model '{folder}': {role} file '{entry['path']}' does not match its sha256; it is corrupt "
            "or was changed after training; restore it or retrain"
        )
    return path


def load_bundle(folder: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> ModelBundle:
    """Load and verify a model folder; ``None`` loads the bundled default model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder) if folder else default_model_dir()
    if not folder.is_dir():
        raise ModelBundleError(f"model folder '{folder}' does not exist")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelBundleError(f"model folder '{folder}' has no config.json; is it a DuPLUS model?")
    try:
        config = BundleConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelBundleError(f"model '{folder}': config.json is invalid: {error}") from None
    weights_path = _verified_file(folder, config, "weights")
    embeddings_path = _verified_file(folder, config, "prompt_embeddings")
    ontology = load_ontology()
    if config.ontology_version.split(".")[0] != ontology.version.split(".")[0]:
        raise ModelBundleError(
            f"model '{folder}' was trained with ontology {config.ontology_version}; "
            f"this library has {ontology.version}"
        )
    unknown = config.inference.unknown_structures(ontology)
    if unknown:
        raise ModelBundleError(
            f"model '{folder}': config.json's inference.largest_component names no structure of the ontology: "
            f"{', '.join(unknown)}; correct or remove them"
        )
    network = DuPLUSNet(config.network)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ModelBundleError(f"model '{folder}': weights are unreadable: {error}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of other shapes than the configured network's
        first = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error)
        raise ModelBundleError(f"model '{folder}': weights do not fit the configured network: {first}") from None
    missing = [k for k in missing if k not in ("prompt_centre", "prompt_scale")]  # older bundles: identity
    if missing or unexpected:
        raise ModelBundleError(
            f"model '{folder}': weights do not fit the configured network "
            f"(missing {len(missing)}, unexpected {len(unexpected)}, e.g. {(missing or unexpected)[0]})"
        )
    network.eval().to(device)
    bundle = ModelBundle(folder, config, network, PromptEmbeddings(), ontology)
    bundle.embeddings = PromptEmbeddings.load(embeddings_path, bundle.text_encoder_factory())
    return bundle
