"""The EHR form a GUI shows, generated from the EHR schema (:mod:`.ehr`) so the two cannot drift.

Each coded field offers its canonical codes, with ``""`` first for "not recorded"; the numeric
fields carry their valid range. The Slicer Prognosis module builds its parameter-node annotations
(``Choice``, ``WithinRange``) from these tables.

Beyond the schema, a model trained on a cohort with further columns asks for them too: the
"Further covariates" part of the form is generated from the column list saved in the model folder's
``prognosis.json`` (:func:`extra_form_fields`), and the values are checked against those columns
(:func:`validate_patient`). Both read only that JSON: no torch, so the Slicer process can build and
check the form before any background worker starts.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ModelBundleError
from . import ehr
from .covariates import ColumnSpec, FormField, form_fields, parse_patient_values

__all__ = ["NOT_RECORDED", "FORM_CHOICES", "FORM_RANGES", "PACK_YEARS_NOT_RECORDED", "AGE_NOT_RECORDED",
           "form_values_to_ehr",
           "model_columns", "extra_form_fields", "validate_patient"]

MODEL_CONFIG_FILE = "prognosis.json"  # = bundle.CONFIG_FILE (bundle.py imports torch; this module must not)

NOT_RECORDED = ""
# A spin box has no empty state: one below the field's range means "not recorded". For the age,
# which every model needs, that makes the form refuse to predict until it is filled in, instead of
# predicting for whatever age the box last showed.
PACK_YEARS_NOT_RECORDED = ehr.PACK_YEARS_RANGE[0] - 1.0
AGE_NOT_RECORDED = ehr.AGE_RANGE[0] - 1.0
_RECORDED_FROM = {"age": ehr.AGE_RANGE[0], "pack_years": ehr.PACK_YEARS_RANGE[0]}


def _canonical(vocabulary: dict[str, str]) -> tuple[str, ...]:
    """The canonical codes of a spelling -> code vocabulary, in first-seen order."""
    return tuple(dict.fromkeys(vocabulary.values()))


# Coded field -> the choices of its combo box (canonical codes; "" = not recorded).
FORM_CHOICES: dict[str, tuple[str, ...]] = {
    "sex": (NOT_RECORDED, *_canonical(ehr.SEX)),
    "site": (NOT_RECORDED, *_canonical(ehr.SITE)),
    "t_stage": (NOT_RECORDED, *ehr.T_STAGES),
    "n_stage": (NOT_RECORDED, *ehr.N_STAGES),
    "m_stage": (NOT_RECORDED, *ehr.M_STAGES),
    "stage": (NOT_RECORDED, *ehr.STAGES),
    "hpv": (NOT_RECORDED, *_canonical(ehr.HPV)),
    "smoking": (NOT_RECORDED, *_canonical(ehr.SMOKING)),
    "ecog": (NOT_RECORDED, "0", "1", "2", "3", "4"),
    "treatment": (NOT_RECORDED, *_canonical(ehr.TREATMENT)),
}

# Numeric field -> (minimum, maximum) of its spin box.
FORM_RANGES: dict[str, tuple[float, float]] = {
    "age": (AGE_NOT_RECORDED, ehr.AGE_RANGE[1]),
    "pack_years": (PACK_YEARS_NOT_RECORDED, ehr.PACK_YEARS_RANGE[1]),
}


def form_values_to_ehr(values: dict) -> dict:
    """The form's values as EHR input: not-recorded fields left out (``""``, None, age or pack-years below range)."""
    clean = {}
    for name, value in values.items():
        if value in (NOT_RECORDED, None):
            continue
        if name in _RECORDED_FROM and float(value) < _RECORDED_FROM[name]:
            continue
        clean[name] = value
    return clean


# ------------------------------------------------------------------ the model's further columns
def _model_config(folder: str | os.PathLike[str] | None) -> dict:
    """The model folder's ``prognosis.json`` (``None``, ``""`` or ``"."``: the bundled model)."""
    if not folder or str(folder) == ".":
        folder = Path(str(resources.files("DuPLUSLib").joinpath("resources/prognosis")))
    path = Path(folder) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise ModelBundleError(f"'{folder}' is not a prognosis model: it has no {MODEL_CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelBundleError(f"'{path}' could not be read as JSON: {error}") from None
    if not isinstance(config, dict):
        raise ModelBundleError(f"'{path}' does not hold a prognosis model's description")
    return config


def model_columns(folder: str | os.PathLike[str] | None = None) -> tuple[list[ColumnSpec], list[str] | None]:
    """The model's kept columns beyond the EHR schema, and the EHR fields its training cohort recorded."""
    config = _model_config(folder)
    try:
        columns = [ColumnSpec.from_dict(c) for c in config.get("covariates", [])]
    except (TypeError, ValueError) as error:
        raise ModelBundleError(f"'{folder}': the model's column list does not load: {error}") from None
    return [c for c in columns if c.kept], config.get("training", {}).get("fields_recorded")


def extra_form_fields(folder: str | os.PathLike[str] | None = None) -> list[FormField]:
    """Typed inputs for the model's further columns (number with limits, choice of known levels, text)."""
    return form_fields(model_columns(folder)[0])


def validate_patient(values: dict[str, Any], folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The patient's values checked against the model's columns: the clean EHR fields and the given
    further covariates; raises ``EHRValidationError`` naming the field."""
    columns, recorded = model_columns(folder)
    record, covariates = parse_patient_values(values, columns, recorded)
    return {**record.to_dict(), **{k: v for k, v in covariates.items() if v is not None}}
