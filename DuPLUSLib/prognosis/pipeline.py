"""The steps the command line and the Slicer module share: cohort -> inputs -> CV -> bundle; patient -> readout.

Each step validates before it computes and computes before anything is written, so a bad row or a
bad segmentation stops the run with nothing on disk.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from ..imageio import atomic_output, check_output_path
from .baseline import CoxBaseline
from .bundle import PrognosisBundle
from .cohort import Cohort, CohortError
from .ehr import EHR_FIELDS, EHRValidationError, parse_ehr, read_patient_values
from .features import PatientInputs, encode_patients
from .image_features import (MEASUREMENT_NAMES, NoTumourError, measurements_vector, pooled_network_features,
                             read_case, tumour_measurements)
from .model import PrognosisConfig, PrognosisModel
from .selection import NestedResult, nested_cross_validate
from .readout import PatientReadout, RiskReference, plot_readout

__all__ = ["cohort_inputs", "default_blocks", "train_bundle", "select_model", "read_patient_ehr",
           "predict_patient", "write_readout", "report_payload"]

Progress = Callable[[str], None]


def cohort_inputs(cohort: Cohort, text_encoder=None, deep_model=None, progress: Progress | None = None,
                  image_column: str | None = None, segmentation_column: str | None = None) -> PatientInputs:
    """Encode every patient once: numbers, sentence embeddings, and image features when the cohort has images."""
    image = deep = None
    if cohort.images is not None:
        image_rows, deep_rows = [], []
        for row, (image_path, seg_path) in enumerate(zip(cohort.images, cohort.segmentations), start=1):
            if progress:
                progress(f"image features {row}/{len(cohort)}")
            try:
                volume, masks = read_case(image_path, seg_path)
            except NoTumourError as error:
                raise CohortError(str(error), None, row, segmentation_column) from None
            except EHRValidationError:
                raise
            except Exception as error:  # unreadable files: name the row
                raise CohortError(f"{error}", None, row, image_column) from None
            image_rows.append(measurements_vector(tumour_measurements(volume, masks)))
            if deep_model is not None:
                deep_rows.append(pooled_network_features(deep_model, volume, masks))
        image = np.stack(image_rows)
        deep = np.stack(deep_rows) if deep_rows else None
    return encode_patients(cohort.records, text_encoder, image, MEASUREMENT_NAMES if image is not None else (), deep,
                           cohort.covariates, cohort.extra_columns)


def default_blocks(inputs: PatientInputs, text: bool = True) -> tuple[str, ...]:
    """Every block the cohort has: the schema's numbers, the extra columns, the sentence, the image."""
    blocks = ["numeric"]
    if inputs.extra is not None and inputs.extra.shape[1]:
        blocks.append("extra")
    if text:
        blocks.append("text")
    if inputs.image is not None:
        blocks.append("image")
    return tuple(blocks)


def select_model(inputs: PatientInputs, cohort: Cohort, config: PrognosisConfig, folds: int = 5, repeats: int = 1,
                 inner_folds: int = 3, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> NestedResult:
    """Nested CV of penalised CoxPH, the DuPLUS head and their ensemble, with lifelines CoxPH beside them."""
    return nested_cross_validate(inputs, cohort.time, cohort.event, config, folds, repeats, inner_folds, seed,
                                 baseline=True, progress=progress)


def model_factories(config: PrognosisConfig, inputs: PatientInputs, ablations: bool = True) -> dict[str, Callable]:
    """Our model, its ablations (one block at a time) and CoxPH, all for the same CV splits."""
    cv_config = PrognosisConfig.from_dict({**config.to_dict(), "n_bootstrap": 0})
    models: dict[str, Callable] = {"duplus": lambda: PrognosisModel(cv_config)}
    if ablations:
        for block in config.use:
            if len(config.use) > 1:
                rest = tuple(b for b in config.use if b != block)
                ablated = PrognosisConfig.from_dict({**cv_config.to_dict(), "use": rest})
                models[f"duplus_without_{block}"] = lambda c=ablated: PrognosisModel(c)
    has_image = inputs.image is not None
    models["coxph"] = lambda: CoxBaseline(use_image=False)
    if has_image:
        models["coxph_with_image"] = lambda: CoxBaseline(use_image=True)
    return models


def train_bundle(inputs: PatientInputs, cohort: Cohort, config: PrognosisConfig, groups: int = 3,
                 time_unit: str = "years", text_encoder_info: Mapping[str, Any] | None = None,
                 deep_model_info: Mapping[str, Any] | None = None,
                 training_info: Mapping[str, Any] | None = None, selection: NestedResult | None = None,
                 horizons: list[float] | None = None) -> PrognosisBundle:
    """Fit on the whole cohort; risk groups and their Kaplan-Meier curves come from its patients.

    With a ``selection`` the model kind is the one it chose (the candidate with the best measured
    outer C-index), fitted with that candidate's blocks.
    """
    if selection is not None:
        from .selection import candidate_configs

        chosen = candidate_configs(config)[selection.chosen]
        config = PrognosisConfig.from_dict({**chosen.to_dict(), "n_bootstrap": config.n_bootstrap})
    model = PrognosisModel(config).fit(inputs, cohort.time, cohort.event)
    reference = RiskReference.build(model.training_risk, cohort.time, cohort.event, groups, time_unit, horizons)
    image_info: dict[str, Any] = {}
    if "image" in config.use or "deep" in config.use:
        image_info = {"measurements": list(MEASUREMENT_NAMES), "deep_model": dict(deep_model_info or {}) or None}
    return PrognosisBundle(
        model, reference,
        text_encoder=dict(text_encoder_info or {"id": "sentence-transformers/all-MiniLM-L6-v2", "path": None}),
        image_features=image_info,
        training={"patients": len(cohort), "events": int(cohort.event.sum()), "source": cohort.source,
                  "fields_recorded": [f for f in EHR_FIELDS if any(getattr(r, f) is not None for r in cohort.records)],
                  "time_unit": time_unit, "notes": cohort.notes, **dict(training_info or {})},
        columns=list(cohort.columns),
        selection=selection.to_dict() if selection is not None else {},
    )


# ---------------------------------------------------------------------------------- patients
def read_patient_ehr(path: str | os.PathLike[str]):
    """An EHR JSON file -> validated record (schema fields only; age required)."""
    return parse_ehr(read_patient_values(path))


def predict_patient(bundle: PrognosisBundle, record, image_path: str | None = None,
                    segmentation_path: str | None = None, deep_model=None,
                    covariates: Mapping[str, Any] | None = None) -> PatientReadout:
    """The readout for one patient; the image and its tumour segmentation if the model uses them.

    ``record`` is an :class:`EHRRecord` (with ``covariates`` already parsed) or a dict of raw
    values, parsed here against the model's columns.
    """
    if isinstance(record, Mapping):
        record, covariates = bundle.parse_patient(dict(record))
    if bool(image_path) != bool(segmentation_path):
        raise EHRValidationError("give both the image and its tumour segmentation, or neither")
    image = deep = None
    values: dict[str, float] = {}
    if image_path:
        volume, masks = read_case(image_path, segmentation_path)
        values = tumour_measurements(volume, masks)
        image = measurements_vector(values)[None]
        if "deep" in bundle.model.config.use:
            if deep_model is None:
                from ..bundle import load_bundle

                deep_model = load_bundle((bundle.image_features.get("deep_model") or {}).get("path"))
            deep = pooled_network_features(deep_model, volume, masks)[None]
    elif bundle.uses_image:
        raise EHRValidationError("this prognosis model uses image features: give --image and --segmentation")
    readout = bundle.readout(record, image, deep, values, dict(covariates or {}))
    if image_path and not bundle.uses_image:  # measured and shown, but say that they did not count
        readout.notes.append("this model reads the health record only: the tumour was measured for the report, "
                             "but the CT and its segmentation did not change the risk")
    return readout


def write_readout(readout: PatientReadout, bundle: PrognosisBundle, report: str | None, plot: str | None,
                  overwrite: bool = True) -> None:
    """Write the JSON report and the plot, each atomically, after checking both destinations."""
    for target in (report, plot):
        if target:
            check_output_path(target, overwrite)
    if plot:
        with atomic_output(plot, overwrite) as temporary:
            plot_readout(readout, bundle.reference, temporary)
    if report:
        with atomic_output(report, overwrite) as temporary:
            temporary.write_text(json.dumps(report_payload(readout, bundle), indent=1) + "\n", encoding="utf-8")


def report_payload(readout: PatientReadout, bundle: PrognosisBundle) -> dict:
    """What ``--report`` holds: the readout and the reference curves the plot is drawn from."""
    reference = bundle.reference
    return {"readout": readout.to_dict(), "model": str(bundle.path) if bundle.path else None,
            "reference": {"labels": reference.labels, "thresholds": reference.thresholds,
                          "curves": [c.__dict__ for c in reference.curves], "time_unit": reference.time_unit}}
