"""A prognosis model folder: JSON for what a person reads, safetensors for the numbers, sha256 for both.

    prognosis_model/
      prognosis.json          format, config, feature names, text encoder, risk groups with their
                              Kaplan-Meier curves, training provenance, the weights file's sha256
      weights.safetensors     feature transforms, the survival head, its bootstrap replicates and
                              their Breslow baseline hazards (never pickle: loading runs no code)

Like the segmentation bundle, every file is checked against its sha256 before use and a path that
points outside the folder is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..bundle import sha256_of
from ..errors import ModelBundleError, OutputPathError
from .covariates import ColumnSpec, covariate_sentence, parse_patient_values
from .ehr import NUMERIC_FEATURES, EHRRecord, ehr_sentence
from .features import BlockTransform, FeatureSpace, PatientInputs, encode_patients
from .model import FittedHead, PrognosisConfig, PrognosisModel, SurvivalHead
from .readout import PatientReadout, RiskReference, horizon_label

__all__ = ["check_model_folder", "PROGNOSIS_FORMAT", "PrognosisBundle", "load_prognosis_bundle", "default_prognosis_dir"]

PROGNOSIS_FORMAT = "duplus-prognosis/1"
CONFIG_FILE = "prognosis.json"
WEIGHTS_FILE = "weights.safetensors"
# numeric-block feature -> the EHR field a person recognises
NUMERIC_SOURCE = {"male": "sex", "site_risk": "site", "hpv_positive": "hpv", "treatment_intensity": "treatment"}


def default_prognosis_dir() -> Path:
    """The EHR model shipped with the library (trained on lifelines' larynx cohort; see PROGNOSIS_CARD.md)."""
    return Path(str(resources.files("DuPLUSLib").joinpath("resources/prognosis")))


@dataclass
class PrognosisBundle:
    """A trained model with its reference cohort summary, ready to give a :class:`PatientReadout`."""

    model: PrognosisModel
    reference: RiskReference
    text_encoder: dict[str, Any] = field(default_factory=lambda: {"id": "sentence-transformers/all-MiniLM-L6-v2", "path": None})
    image_features: dict[str, Any] = field(default_factory=dict)  # {"measurements": [...], "deep_model": ...}
    training: dict[str, Any] = field(default_factory=dict)
    columns: list[ColumnSpec] = field(default_factory=list)  # every cohort column and how it was read
    selection: dict[str, Any] = field(default_factory=dict)  # the nested CV that chose the model kind
    path: Path | None = None
    _encoder: Any = None

    @property
    def extra_columns(self) -> list[ColumnSpec]:
        """The covariates beyond the EHR schema this model was trained with (the form asks for them)."""
        return [c for c in self.columns if c.kept]

    def parse_patient(self, values: dict[str, Any]) -> tuple[EHRRecord, dict[str, str | None]]:
        """A patient's values (``--ehr`` JSON, the Slicer form) -> the EHR record and the extra covariates.

        A key that is neither an EHR field nor a column of this model is refused (a typo would
        otherwise be dropped silently); age is required only if the training cohort recorded it.
        """
        return parse_patient_values(values, self.extra_columns, self.training.get("fields_recorded"))

    @property
    def uses_text(self) -> bool:
        return "text" in self.model.config.use

    @property
    def uses_image(self) -> bool:
        return bool({"image", "deep"} & set(self.model.config.use))

    def encoder(self):
        """The text encoder, loaded on first need (about 2 s) and kept."""
        if self._encoder is None and self.uses_text:
            from ..text import TextEncoder

            self._encoder = TextEncoder(self.text_encoder.get("path"))
        return self._encoder

    # ------------------------------------------------------------------------------- readout
    def inputs(self, records: Sequence[EHRRecord], image: np.ndarray | None = None,
               deep: np.ndarray | None = None, covariates: Sequence[dict] | None = None) -> PatientInputs:
        if self.uses_image and image is None:
            raise ModelBundleError(
                "this prognosis model uses image features: give the CT and its tumour segmentation"
            )
        return encode_patients(records, self.encoder(), image, self.image_features.get("measurements", ()), deep,
                               covariates, self.extra_columns)

    def readout(self, record: EHRRecord, image: np.ndarray | None = None, deep: np.ndarray | None = None,
                image_values: dict[str, float] | None = None,
                covariates: dict[str, str | None] | None = None) -> PatientReadout:
        """Risk, percentile, group, survival at the model's horizons with 95% intervals, the curve to
        plot, and the covariates that drove this patient's risk."""
        covariates = dict(covariates or {})
        inputs = self.inputs([record], image, deep, [covariates])
        unit = self.reference.time_unit
        risk = float(self.model.predict_risk(inputs)[0])
        grid = np.linspace(0.0, self.reference.max_follow_up, 200)
        horizons = self.reference.readout_horizons()
        times = np.concatenate([grid, horizons])
        point = self.model.predict_survival_function(inputs, times)[0]
        lower, upper = (b[0] for b in self.model.predict_survival_interval(inputs, times))
        survival = {}
        for offset, t in enumerate(horizons):
            j = len(grid) + offset
            survival[horizon_label(t, unit)] = {
                "time": float(t), "estimate": float(point[j]), "lower": float(lower[j]), "upper": float(upper[j]),
                "beyond_follow_up": bool(t > self.reference.max_follow_up)}
        sentence = f"{ehr_sentence(record)} {covariate_sentence(covariates, self.extra_columns)}".strip()
        return PatientReadout(
            sentence=sentence, risk_score=risk, hazard_ratio=float(np.exp(risk)),
            percentile=self.reference.percentile(risk), risk_group=self.reference.group_of(risk),
            survival=survival, curve_times=[float(t) for t in grid], curve=[float(v) for v in point[: len(grid)]],
            curve_lower=[float(v) for v in lower[: len(grid)]], curve_upper=[float(v) for v in upper[: len(grid)]],
            time_unit=unit, image_features=dict(image_values or {}),
            notes=self._unseen_field_notes(record) + self._missing_covariate_notes(covariates),
            contributions=self._contributions(inputs, record, covariates, image_values or {}),
            model_kind=self.model.config.kind,
        )

    def _contributions(self, inputs: PatientInputs, record: EHRRecord, covariates: dict,
                       image_values: dict) -> list[dict]:
        """Per source column: the summed contributions of its features (one-hot levels, missing
        indicator), with the patient's value; largest effect first."""
        if self.model.main is None or self.model.main.head.mlp is not None:
            return []
        names, values = self.model.contributions(inputs)
        source_of = {f: c.name for c in self.extra_columns for f in c.feature_names()}
        totals: dict[str, float] = {}
        shown: dict[str, str] = {}
        for name, value in zip(names, values[0]):
            base = name[:-len(":missing")] if name.endswith(":missing") else name
            block, _, feature = base.partition(":") if ":" in base and base.split(":")[0] in ("text", "deep", "image") \
                else ("", "", base)
            if block == "text":
                source, display = "EHR sentence (text embedding)", "as written"
            elif block == "deep":
                source, display = "network features in the tumour", "pooled"
            elif block == "image":
                source, display = f"tumour {feature}", _display(image_values.get(feature.replace("log_", "").replace(
                    "_intensity", "_intensity")))
            elif base in source_of:
                source = source_of[base]
                display = _display(covariates.get(source))
            elif base in NUMERIC_FEATURES:
                source = NUMERIC_SOURCE.get(base, base)
                display = _display(getattr(record, source, None))
            else:
                source, display = base, ""
            totals[source] = totals.get(source, 0.0) + float(value)
            shown.setdefault(source, display)
        return [{"name": k, "value": shown[k], "contribution": v}
                for k, v in sorted(totals.items(), key=lambda item: -abs(item[1]))]

    def _missing_covariate_notes(self, covariates: dict) -> list[str]:
        absent = [c.name for c in self.extra_columns if c.width and covariates.get(c.name) is None]
        if not absent:
            return []
        return [f"not given: {', '.join(absent)}; read as missing (imputed to the training mean; "
                f"a missing-value indicator where the training cohort had missing values), less informative than the value"]

    def _unseen_field_notes(self, record: EHRRecord) -> list[str]:
        """Fields given for this patient that the training cohort never recorded: the model has not
        learnt their effect (the sentence carries them, but no training patient varied in them)."""
        recorded = self.training.get("fields_recorded")
        if recorded is None:
            return []
        unseen = [f for f, v in record.to_dict().items() if f not in recorded]
        if not unseen:
            return []
        return [f"the training cohort did not record {', '.join(unseen)}; this model cannot weigh "
                f"{'it' if len(unseen) == 1 else 'them'} (it learnt from {', '.join(recorded) or 'nothing'})"]

    # ---------------------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the folder atomically: into a sibling temporary folder, then renamed into place."""
        from safetensors.torch import save_file

        from ..imageio import give_normal_rights

        folder = Path(folder)
        check_model_folder(folder)
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise OutputPathError(f"model folder '{folder}' exists and is not empty; choose another or pass --overwrite")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            arrays = _model_arrays(self.model)
            save_file({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in arrays.items()},
                      str(staging / WEIGHTS_FILE), metadata={"format": PROGNOSIS_FORMAT})
            config = {
                "format": PROGNOSIS_FORMAT,
                "model": self.model.config.to_dict(),
                "epochs": self.model.epochs,
                "feature_names": {n: b.names for n, b in self.model.features.blocks.items()},
                "replicates": len(self.model.replicates),
                "text_encoder": self.text_encoder,
                "image_features": self.image_features,
                "reference": self.reference.to_dict(),
                "training": self.training,
                "covariates": [c.to_dict() for c in self.columns],
                "selection": self.selection,
                "cox_penalty": self.model.cox_penalty,
                "files": {"weights": {"path": WEIGHTS_FILE, "sha256": sha256_of(staging / WEIGHTS_FILE)}},
            }
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
            if folder.exists():
                for child in folder.iterdir():
                    child.unlink()
                folder.rmdir()
            for path in (staging, *staging.iterdir()):  # mkdtemp and safetensors make owner-only ones
                give_normal_rights(path)
            staging.rename(folder)
        except BaseException:
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
            raise
        self.path = folder
        return folder


def _model_arrays(model: PrognosisModel) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, block in model.features.blocks.items():
        arrays.update(block.arrays(f"features.{name}"))
    for prefix, fitted in [("main", model.main)] + [(f"replicate{i}", r) for i, r in enumerate(model.replicates)]:
        for key, tensor in fitted.head.state_dict().items():
            arrays[f"{prefix}.head.{key}"] = tensor.detach().cpu().numpy()
        arrays[f"{prefix}.event_times"] = fitted.event_times
        arrays[f"{prefix}.cumulative_hazard"] = fitted.cumulative_hazard
        arrays[f"{prefix}.risk_offset"] = np.array([fitted.risk_offset])
    arrays["training_risk"] = model.training_risk
    return arrays


def _fitted_head(arrays: dict[str, np.ndarray], prefix: str, width: int, config: PrognosisConfig) -> FittedHead:
    head = SurvivalHead(width, config.hidden, config.dropout)
    state = {k[len(prefix) + 6:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith(f"{prefix}.head.")}
    head.load_state_dict(state)
    head.eval()
    return FittedHead(head, arrays[f"{prefix}.event_times"], arrays[f"{prefix}.cumulative_hazard"],
                      float(arrays[f"{prefix}.risk_offset"][0]))


def check_model_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse, before any training, a model folder that saving could not replace whole: a file, or a
    folder holding more than a prognosis model's own files (``--overwrite`` replaces only those)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"model folder '{folder}' is a file; give a folder name with -o")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in (CONFIG_FILE, WEIGHTS_FILE) or p.is_dir())
        if foreign:
            raise OutputPathError(f"model folder '{folder}' holds {', '.join(foreign[:5])}, which is not part of a "
                                  "prognosis model; --overwrite replaces only a model's own files: choose another folder")


def load_prognosis_bundle(folder: str | os.PathLike[str] | None = None) -> PrognosisBundle:
    """Load and verify a prognosis model folder; ``None`` loads the bundled larynx EHR model."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder) if folder else default_prognosis_dir()
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelBundleError(f"'{folder}' is not a prognosis model: it has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelBundleError(f"'{config_path}' is not valid JSON: {error}") from None
    if config.get("format") != PROGNOSIS_FORMAT:
        raise ModelBundleError(f"'{folder}': unsupported format {config.get('format')!r}; this version reads {PROGNOSIS_FORMAT}")
    entry = config.get("files", {}).get("weights", {})
    weights = (folder / entry.get("path", WEIGHTS_FILE)).resolve()
    if folder.resolve() not in weights.parents:
        raise ModelBundleError(f"'{folder}': the weights path points outside the model folder; refused")
    if not weights.is_file():
        raise ModelBundleError(f"'{folder}': weights file '{entry.get('path')}' is missing")
    if sha256_of(weights) != entry.get("sha256"):
        raise ModelBundleError(f"'{folder}': '{weights.name}' does not match its sha256; it is corrupt or was changed; retrain or restore it")
    try:
        arrays = load_file(str(weights))
        model_config = PrognosisConfig.from_dict(config["model"])
        blocks = {name: BlockTransform.from_arrays(arrays, f"features.{name}", names)
                  for name, names in config["feature_names"].items()}
        model = PrognosisModel(model_config, FeatureSpace(blocks), epochs=int(config["epochs"]),
                               cox_penalty=config.get("cox_penalty"))
        columns = [ColumnSpec.from_dict(c) for c in config.get("covariates", [])]
        width = model.features.width
        model.main = _fitted_head(arrays, "main", width, model_config)
        model.replicates = [_fitted_head(arrays, f"replicate{i}", width, model_config) for i in range(int(config["replicates"]))]
        model.training_risk = arrays["training_risk"]
        reference = RiskReference.from_dict(config["reference"])
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelBundleError(f"'{folder}': the model does not load: {type(error).__name__}: {error}") from None
    return PrognosisBundle(model, reference, config.get("text_encoder", {}), config.get("image_features", {}),
                           config.get("training", {}), columns, config.get("selection", {}), folder)


def _display(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
