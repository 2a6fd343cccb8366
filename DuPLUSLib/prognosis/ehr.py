"""The head-and-neck EHR: a typed record, its validation, its sentence and its numbers.

The record is the one place the clinical fields are defined. Every field but ``age`` may be
missing, because real cohorts rarely record everything (the larynx cohort has only age and stage);
a missing field is left out of the sentence and imputed in the numeric encoding, never guessed.

Values enter through :func:`parse_ehr`, which accepts the spellings clinicians and spreadsheets use
("T2", "2", "t2"; "IVA", "4a"; "pos", "+") and refuses anything else with an :class:`EHRValidationError`
that names the field and, for cohorts, the row and column.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DuPLUSError

__all__ = [
    "EHRRecord",
    "EHRValidationError",
    "EHR_FIELDS",
    "parse_ehr",
    "read_patient_values",
    "ehr_sentence",
    "NUMERIC_FEATURES",
    "numeric_encoding",
]

AGE_RANGE = (0.0, 120.0)  # years; outside is a data-entry error, not a patient
PACK_YEARS_RANGE = (0.0, 300.0)


class EHRValidationError(DuPLUSError, ValueError):
    """An EHR value that is missing where required, of the wrong type, or not a known code.

    ``field`` names the schema field; ``row`` (1-based data row) and ``column`` the cohort cell,
    when the value came from a CSV.
    """

    def __init__(self, message: str, field: str | None = None, row: int | None = None, column: str | None = None):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        elif field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.field, self.row, self.column = field, row, column
        self.detail = message  # the message without where it happened


# -------------------------------------------------------------------------------- vocabularies
# Each vocabulary maps accepted spellings (lower case, spaces/underscores/hyphens removed) to the
# canonical code. Canonical codes are what records hold and what bundles store.
SEX = {"male": "male", "m": "male", "man": "male", "female": "female", "f": "female", "woman": "female"}
SITE = {
    "oropharynx": "oropharynx", "oropharyngeal": "oropharynx", "tonsil": "oropharynx", "baseoftongue": "oropharynx",
    "larynx": "larynx", "laryngeal": "larynx", "glottis": "larynx", "supraglottis": "larynx",
    "hypopharynx": "hypopharynx", "hypopharyngeal": "hypopharynx",
    "oralcavity": "oral_cavity", "oral": "oral_cavity", "mouth": "oral_cavity",
    "nasopharynx": "nasopharynx", "nasopharyngeal": "nasopharynx",
    "unknownprimary": "unknown_primary", "cup": "unknown_primary",
}
SITE_ADJECTIVE = {
    "oropharynx": "oropharyngeal", "larynx": "laryngeal", "hypopharynx": "hypopharyngeal",
    "oral_cavity": "oral cavity", "nasopharynx": "nasopharyngeal", "unknown_primary": "unknown-primary",
}
T_STAGES = ("Tx", "T0", "Tis", "T1", "T2", "T3", "T4", "T4a", "T4b")
N_STAGES = ("Nx", "N0", "N1", "N2", "N2a", "N2b", "N2c", "N3", "N3a", "N3b")
M_STAGES = ("Mx", "M0", "M1")
STAGES = ("0", "I", "II", "III", "IV", "IVA", "IVB", "IVC")
HPV = {"positive": "positive", "pos": "positive", "+": "positive", "1": "positive", "true": "positive",
       "yes": "positive", "p16positive": "positive",
       "negative": "negative", "neg": "negative", "-": "negative", "0": "negative", "false": "negative",
       "no": "negative", "p16negative": "negative"}
SMOKING = {"never": "never", "neversmoker": "never", "non": "never", "nonsmoker": "never",
           "former": "former", "ex": "former", "exsmoker": "former", "formersmoker": "former",
           "current": "current", "currentsmoker": "current", "smoker": "current"}
TREATMENT = {
    "radiotherapy": "radiotherapy", "rt": "radiotherapy", "radiation": "radiotherapy",
    "chemoradiotherapy": "chemoradiotherapy", "crt": "chemoradiotherapy", "chemoradiation": "chemoradiotherapy",
    "surgery": "surgery", "resection": "surgery",
    "surgery+radiotherapy": "surgery_radiotherapy", "surgeryradiotherapy": "surgery_radiotherapy",
    "surgery+chemoradiotherapy": "surgery_chemoradiotherapy", "surgerychemoradiotherapy": "surgery_chemoradiotherapy",
}
TREATMENT_TEXT = {
    "radiotherapy": "radiotherapy", "chemoradiotherapy": "chemoradiotherapy", "surgery": "surgery",
    "surgery_radiotherapy": "surgery and adjuvant radiotherapy",
    "surgery_chemoradiotherapy": "surgery and adjuvant chemoradiotherapy",
}
ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV", "4a": "IVA", "4b": "IVB", "4c": "IVC", "0": "0"}
MISSING_TEXT = {"", "na", "nan", "none", "null", "unknown", "missing", "?", "n/a"}


@dataclass(frozen=True)
class EHRRecord:
    """One patient's clinical data, in canonical codes; ``None`` means not recorded."""

    age: float | None = None  # years at diagnosis
    sex: str | None = None  # male, female
    site: str | None = None  # oropharynx, larynx, hypopharynx, oral_cavity, nasopharynx, unknown_primary
    t_stage: str | None = None  # Tx, T0, Tis, T1..T4b
    n_stage: str | None = None  # Nx, N0..N3b
    m_stage: str | None = None  # Mx, M0, M1
    stage: str | None = None  # 0, I, II, III, IV, IVA, IVB, IVC (AJCC overall stage)
    hpv: str | None = None  # positive, negative (HPV or p16)
    smoking: str | None = None  # never, former, current
    pack_years: float | None = None
    ecog: int | None = None  # ECOG performance status 0-4
    treatment: str | None = None  # radiotherapy, chemoradiotherapy, surgery, surgery_radiotherapy, ...

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


EHR_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EHRRecord))


# ------------------------------------------------------------------------------------- parsing
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


def _squash(value: Any) -> str:
    text = str(value).strip().lower()
    if re.fullmatch(r"[0-9]+\.0", text):  # 2.0 from a float column means 2
        text = text[:-2]
    return re.sub(r"[\s_\-]", "", text) if text not in ("-", "+") else text


def _vocabulary(value: Any, vocabulary: Mapping[str, str], name: str) -> str:
    key = _squash(value)
    if key in vocabulary:
        return vocabulary[key]
    choices = ", ".join(sorted(set(vocabulary.values())))
    raise EHRValidationError(f"unknown {name} {value!r}; expected one of: {choices}", name)


def _stage_code(value: Any, codes: tuple[str, ...], prefix: str, name: str) -> str:
    key = _squash(value)
    key = key[len(prefix.lower()):] if key.startswith(prefix.lower()) else key
    by_suffix = {c[len(prefix):].lower(): c for c in codes}
    if key in by_suffix:
        return by_suffix[key]
    raise EHRValidationError(f"unknown {name} code {value!r}; expected one of: {', '.join(codes)}", name)


def _overall_stage(value: Any) -> str:
    key = _squash(value)
    key = key[len("stage"):] if key.startswith("stage") else key
    key = ROMAN.get(key, key.upper())
    if key in STAGES:
        return key
    raise EHRValidationError(
        f"unknown overall stage {value!r}; expected one of: {', '.join(STAGES)} (or 0-4, 4a-4c)", "stage"
    )


def _number(value: Any, name: str, low: float, high: float, unit: str, integer: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EHRValidationError(f"{value!r} is not a number", name) from None
    if not math.isfinite(number) or not low <= number <= high:
        raise EHRValidationError(f"{value!r} is not a possible {name}; expected {low:g}-{high:g} {unit}", name)
    if integer and number != int(number):
        raise EHRValidationError(f"{value!r} is not a whole number", name)
    return int(number) if integer else number


_PARSERS = {
    "age": lambda v: _number(v, "age", *AGE_RANGE, "years"),
    "sex": lambda v: _vocabulary(v, SEX, "sex"),
    "site": lambda v: _vocabulary(v, SITE, "tumour site"),
    "t_stage": lambda v: _stage_code(v, T_STAGES, "T", "T stage"),
    "n_stage": lambda v: _stage_code(v, N_STAGES, "N", "N stage"),
    "m_stage": lambda v: _stage_code(v, M_STAGES, "M", "M stage"),
    "stage": _overall_stage,
    "hpv": lambda v: _vocabulary(v, HPV, "HPV status"),
    "smoking": lambda v: _vocabulary(v, SMOKING, "smoking status"),
    "pack_years": lambda v: _number(v, "pack_years", *PACK_YEARS_RANGE, "pack-years"),
    "ecog": lambda v: _number(v, "ecog", 0, 4, "(ECOG performance status)", integer=True),
    "treatment": lambda v: _vocabulary(v, TREATMENT, "treatment"),
}


def parse_ehr(values: Mapping[str, Any], required: tuple[str, ...] = ("age",)) -> EHRRecord:
    """A validated :class:`EHRRecord` from loosely spelled values (a JSON object, a CSV row).

    Unknown keys are refused (a typo such as ``"stge"`` would otherwise silently drop the stage).
    """
    unknown = sorted(set(values) - set(EHR_FIELDS))
    if unknown:
        raise EHRValidationError(
            f"unknown EHR field(s) {', '.join(map(repr, unknown))}; the fields are: {', '.join(EHR_FIELDS)}"
        )
    parsed: dict[str, Any] = {}
    for name in EHR_FIELDS:
        value = values.get(name)
        if _is_missing(value):
            if name in required:
                raise EHRValidationError(f"{name} is required", name)
            continue
        try:
            parsed[name] = _PARSERS[name](value)
        except EHRValidationError as error:
            message = str(error).split(": ", 1)[1] if str(error).startswith("field ") else str(error)
            raise EHRValidationError(message, name) from None
    return EHRRecord(**parsed)


# ------------------------------------------------------------------------------------ sentence
def ehr_sentence(record: EHRRecord) -> str:
    """The record as one clinical sentence, the way DuPLUS feeds text to its encoder.

    Why a sentence: the same frozen text encoder that reads segmentation prompts then reads the EHR,
    so new fields or wordings need no new input layer, and missing fields simply drop out of the
    sentence instead of needing a placeholder value. Example:
    "A 63-year-old man with HPV-positive oropharyngeal cancer, T2 N1 M0, stage III, current smoker
    (30 pack-years), ECOG 1, treated with chemoradiotherapy."
    """
    person = {"male": "man", "female": "woman"}.get(record.sex or "", "patient")
    age = f"{record.age:g}-year-old " if record.age is not None else ""
    article = "An" if age.startswith("8") or age.startswith(("11-", "18-")) else "A"
    disease = "cancer"
    if record.site:
        disease = f"{SITE_ADJECTIVE[record.site]} cancer"
    if record.hpv:
        disease = f"HPV-{record.hpv} {disease}"
    head = f"{article} {age}{person} with {disease}"
    parts = [head]
    tnm = " ".join(code for code in (record.t_stage, record.n_stage, record.m_stage) if code)
    if tnm:
        parts.append(tnm)
    if record.stage:
        parts.append(f"stage {record.stage}")
    if record.smoking:
        smoker = {"never": "never smoker", "former": "former smoker", "current": "current smoker"}[record.smoking]
        if record.pack_years is not None:
            smoker += f" ({record.pack_years:g} pack-years)"
        parts.append(smoker)
    elif record.pack_years is not None:
        parts.append(f"{record.pack_years:g} pack-years of smoking")
    if record.ecog is not None:
        parts.append(f"ECOG {record.ecog}")
    if record.treatment:
        parts.append(f"treated with {TREATMENT_TEXT[record.treatment]}")
    return ", ".join(parts) + "."


# ------------------------------------------------------------------------------------- numbers
# Ordinal encodings keep one number per field: with tens of events per cohort, a dummy column per
# category costs degrees of freedom the data cannot pay for (on the larynx cohort, CoxPH with
# ordinal stage scores a higher cross-validated C-index than with stage dummies).
T_ORDINAL = {"Tx": math.nan, "T0": 0, "Tis": 0.5, "T1": 1, "T2": 2, "T3": 3, "T4": 4, "T4a": 4, "T4b": 4.5}
N_ORDINAL = {"Nx": math.nan, "N0": 0, "N1": 1, "N2": 2, "N2a": 2, "N2b": 2, "N2c": 2.5, "N3": 3, "N3a": 3, "N3b": 3}
M_ORDINAL = {"Mx": math.nan, "M0": 0, "M1": 1}
STAGE_ORDINAL = {"0": 0, "I": 1, "II": 2, "III": 3, "IV": 4, "IVA": 4, "IVB": 4.33, "IVC": 4.67}
SMOKING_ORDINAL = {"never": 0, "former": 1, "current": 2}
TREATMENT_INTENSITY = {"surgery": 0, "radiotherapy": 1, "surgery_radiotherapy": 1.5, "chemoradiotherapy": 2,
                       "surgery_chemoradiotherapy": 2.5}
SITE_HIGH_RISK = {"oropharynx": 0, "nasopharynx": 0, "larynx": 1, "oral_cavity": 1, "hypopharynx": 1,
                  "unknown_primary": 0.5}

NUMERIC_FEATURES: tuple[str, ...] = (
    "age", "male", "site_risk", "t_stage", "n_stage", "m_stage", "stage", "hpv_positive",
    "smoking", "pack_years", "ecog", "treatment_intensity",
)


def numeric_encoding(record: EHRRecord) -> np.ndarray:
    """The record as ``len(NUMERIC_FEATURES)`` numbers, NaN where missing (imputed by the model)."""
    def lookup(table: Mapping[str, float], key: str | None) -> float:
        return math.nan if key is None else float(table[key])

    return np.array([
        math.nan if record.age is None else record.age,
        math.nan if record.sex is None else float(record.sex == "male"),
        lookup(SITE_HIGH_RISK, record.site),
        lookup(T_ORDINAL, record.t_stage),
        lookup(N_ORDINAL, record.n_stage),
        lookup(M_ORDINAL, record.m_stage),
        lookup(STAGE_ORDINAL, record.stage),
        math.nan if record.hpv is None else float(record.hpv == "positive"),
        lookup(SMOKING_ORDINAL, record.smoking),
        math.nan if record.pack_years is None else record.pack_years,
        math.nan if record.ecog is None else float(record.ecog),
        lookup(TREATMENT_INTENSITY, record.treatment),
    ], dtype=np.float64)


def _json_text(data: bytes) -> str:
    """JSON text as editors write it: UTF-8 with or without a BOM, or UTF-16 with its BOM (what
    Windows PowerShell 5's ``>`` writes)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


def read_patient_values(path: "str | os.PathLike[str]") -> dict:
    """An EHR JSON file -> its field: value pairs (validated against a model by ``bundle.parse_patient``)."""
    path = Path(path)
    try:
        values = json.loads(_json_text(path.read_bytes()))
    except FileNotFoundError:
        raise EHRValidationError(f"EHR file '{path}' does not exist") from None
    except OSError as error:  # a folder, no permission
        raise EHRValidationError(f"EHR file '{path}' cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise EHRValidationError(f"EHR file '{path}' is not UTF-8 or UTF-16 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise EHRValidationError(f"EHR file '{path}' is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise EHRValidationError(f"EHR file '{path}' must hold one JSON object of field: value pairs")
    return values
