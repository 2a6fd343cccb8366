"""Every column of a cohort that is not time, event or id becomes a covariate, typed automatically.

A clinic's export always has columns beyond the head-and-neck schema (centre, grade, performance
scales, lab values, radiomics). Each one is read here, once, from the whole cohort's values (never
from the outcome, so typing on all patients leaks nothing into cross-validation):

=================  ========================================================================
read as            how it enters the model
=================  ========================================================================
schema field       the EHR schema's parser and numeric code (age, stage, t_stage, ...)
numeric            the number (log1p first when it is a skewed count or level); the model
                   standardises it on the training patients and adds a missing indicator
binary             two values: a 0/1 column keeps its coding; otherwise 0 for the more frequent
                   value, 1 for the other
ordinal            a recognised scale turned into its rank: T0-T4, N0-N3, M0-M1, I-IV,
                   G1-G3, well/moderately/poorly differentiated, ECOG/PS 0-4, low/high...
categorical        one column per level against the most frequent one; levels seen in fewer
                   than ``max(5, 2 %)`` patients are pooled into "other" (or, when too few
                   patients to make a level of their own, join the reference); missing is a level
text               free text (many distinct multi-word values): the EHR sentence only
dropped            constant, all missing, or a distinct value per patient (an id in disguise)
=================  ========================================================================

Every column, numbers included, also enters the EHR sentence as ``name: value``, so the text path
sees it too. Date columns are refused: a calendar date is not a covariate until it is turned into a
duration (days from diagnosis to treatment, say), and that choice belongs to the user.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .ehr import EHR_FIELDS, MISSING_TEXT, EHRRecord, EHRValidationError, parse_ehr

__all__ = ["ColumnSpec", "CovariateError", "type_column", "encode_covariates", "covariate_sentence",
           "parse_covariate_value", "parse_patient_values", "column_table", "univariable_c_index", "FormField", "form_fields",
           "KEPT_KINDS", "MODEL_KINDS"]

KEPT_KINDS = ("numeric", "binary", "ordinal", "categorical", "text")  # read by the model (text: sentence only)
MODEL_KINDS = ("numeric", "binary", "ordinal", "categorical")  # give numbers to the numeric path
LARGEST_NUMBER = 1e15  # beyond this a cell is a data-entry error (and squares overflow): refused
OTHER_LEVEL = "other"
MISSING_LEVEL = "(missing)"


class CovariateError(EHRValidationError):
    """A column that cannot be a covariate as it is (a date), or a value a model's column cannot take."""


# ---------------------------------------------------------------------------- ordinal scales
def _words(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


_ROMAN = {"0": 0, "i": 1, "ii": 2, "iii": 3, "iv": 4, "iva": 4, "ivb": 4.33, "ivc": 4.67, "v": 5}
_DIFFERENTIATION = {"well differentiated": 1, "well": 1, "moderately differentiated": 2, "moderately": 2,
                    "moderate": 2, "poorly differentiated": 3, "poorly": 3, "undifferentiated": 4}
_LEVELS = {"very low": 0, "low": 1, "intermediate": 2, "medium": 2, "moderate": 2, "high": 3, "very high": 4}
_SEVERITY = {"none": 0, "mild": 1, "moderate": 2, "severe": 3}


def _tnm_rank(prefix: str):
    pattern = re.compile(rf"^(?:c|p|yp)?{prefix}\s*(x|is|[0-4])\s*([abc]?)$")

    def rank(value: str) -> float | None:
        match = pattern.match(value.replace(" ", ""))
        if not match:
            return None
        code, sub = match.groups()
        if code == "x":
            return math.nan  # Tx, Nx: not assessable = missing
        base = 0.5 if code == "is" else float(code)
        return base + {"": 0.0, "a": 0.0, "b": 0.33, "c": 0.67}[sub]

    return rank


def _prefixed_number(prefixes: str, low: int, high: int):
    pattern = re.compile(rf"^(?:{prefixes})\s*([0-9]+)$")

    def rank(value: str) -> float | None:
        match = pattern.match(value)
        if not match:
            return None
        number = int(match.group(1))
        return float(number) if low <= number <= high else None

    return rank


def _roman(value: str) -> float | None:
    key = re.sub(r"^(stage|grade|g)\s*", "", value).replace(" ", "")
    return float(_ROMAN[key]) if key in _ROMAN and key != "0" else None


def _table(table: Mapping[str, float]):
    return lambda value: float(table[value]) if value in table else None


# (name shown in the column table, rank function of lower-cased words); first scale that reads every value wins
ORDINAL_SCALES: tuple[tuple[str, Any], ...] = (
    ("T stage", _tnm_rank("t")),
    ("N stage", _tnm_rank("n")),
    ("M stage", _tnm_rank("m")),
    ("grade G1-G4", _prefixed_number(r"g|grade", 1, 4)),
    ("ECOG/WHO performance status", _prefixed_number(r"ecog|ps|who|zubrod", 0, 4)),
    ("Roman numerals (stage/grade)", _roman),
    ("differentiation", _table(_DIFFERENTIATION)),
    ("low < intermediate < high", _table(_LEVELS)),
    ("none < mild < moderate < severe", _table(_SEVERITY)),
)

# Names that say "a scale with an order" (integer codes read as a rank) or "a category" (integer codes
# that are labels, e.g. centre 1-6): a token of the column name, split on non-letters and camelCase.
ORDINAL_NAME_TOKENS = {"ecog", "ps", "karnofsky", "karno", "kps", "zubrod", "who", "grade", "stage", "score",
                       "scale", "level", "cond", "condition", "performance", "status"}
CATEGORY_NAME_TOKENS = {"inst", "institution", "centre", "center", "site", "subsite", "hospital", "clinic",
                        "country", "region", "race", "ethnicity", "ethnic", "treatment", "tx", "trt", "arm",
                        "group", "type", "histology", "location", "surgeon", "subtype", "origin"}
ID_NAME_TOKENS = {"id", "case", "no", "nr", "number", "record", "row", "index", "subject", "patient", "mrn", "key"}
DATE_NAME_TOKENS = {"date", "dt", "dob", "datetime", "timestamp", "day", "diagdate"}
DATE_PATTERN = re.compile(
    r"^(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?)?|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
    r"|\d{1,2}[ -][a-z]{3,9}[ -]\d{2,4}|[a-z]{3,9} \d{1,2},? \d{4})$"
)


def _name_tokens(name: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return {t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t}


# ------------------------------------------------------------------------------------ spec
@dataclass
class ColumnSpec:
    """How one cohort column is read; stored in the model bundle and used to build the Slicer form."""

    name: str
    kind: str  # schema, numeric, binary, ordinal, categorical, text, dropped
    how: str  # one line for the column table
    missing: float = 0.0  # share of patients without a value
    schema_field: str | None = None  # for kind "schema": the EHR field it holds
    levels: list[str] = field(default_factory=list)  # categorical: kept levels (first = reference); binary: [0, 1]
    pooled: list[str] = field(default_factory=list)  # categorical levels pooled into "other"
    ranks: dict[str, float] = field(default_factory=dict)  # ordinal: value seen -> rank
    scale: str = ""  # ordinal: the scale's name
    log: bool = False  # numeric: log1p before standardising
    minimum: float | None = None  # numeric: observed range (the form's limits allow a margin)
    maximum: float | None = None
    integer: bool = False
    note: str = ""  # why the column was dropped or read unusually
    c_index: float | None = None  # univariable C-index on the training cohort

    @property
    def kept(self) -> bool:
        return self.kind in KEPT_KINDS

    @property
    def width(self) -> int:
        """How many numbers the column adds to the numeric path."""
        if self.kind == "categorical":
            return len(self.levels) - 1
        return 1 if self.kind in ("numeric", "binary", "ordinal") else 0

    def feature_names(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={level}" for level in self.levels[1:]]
        return [self.name] if self.width else []

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ColumnSpec":
        return cls(**dict(values))


# --------------------------------------------------------------------------------- typing
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in MISSING_TEXT


def _as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def type_column(name: str, values: Sequence[Any], rows: Sequence[int] | None = None) -> ColumnSpec:
    """Read one column's values (strings as in the CSV) and decide how the model reads it.

    Raises :class:`CovariateError` for a date column, naming the first date cell's row.
    """
    rows = list(rows) if rows is not None else list(range(1, len(values) + 1))
    texts = [None if _is_missing(v) else str(v).strip() for v in values]
    present = [(r, t) for r, t in zip(rows, texts) if t is not None]
    missing = 1.0 - len(present) / max(len(texts), 1)
    spec = lambda kind, how, **kw: ColumnSpec(name, kind, how, round(missing, 4), **kw)  # noqa: E731
    if not present:
        return spec("dropped", "dropped: no patient has a value", note="every value is missing")
    _refuse_dates(name, present)
    distinct = sorted({t for _, t in present})
    if len(distinct) == 1:
        return spec("dropped", f"dropped: constant ({distinct[0]!r} for every patient with a value)",
                    note=f"every patient with a value has {distinct[0]!r}; a constant cannot separate risks")
    numbers = [_as_number(t) for _, t in present]
    tokens = _name_tokens(name)
    if all(n is not None for n in numbers):
        for (row, text), number in zip(present, numbers):
            if abs(number) > LARGEST_NUMBER:
                raise CovariateError(f"{text!r} is beyond +-{LARGEST_NUMBER:g}; correct the value, rescale the "
                                     f"column, or leave it out with --exclude '{name}'", None, row, name)
        return _numeric_column(spec, name, np.asarray(numbers, float), len(texts), tokens)
    lowered = [_words(t) for _, t in present]
    for scale, rank in ORDINAL_SCALES:
        ranks = {}
        for text, low in zip((t for _, t in present), lowered):
            value = rank(low)
            if value is None:
                break
            ranks[text] = value
        else:
            order = sorted(ranks, key=lambda k: (ranks[k], k))
            shown = " < ".join(dict.fromkeys(order))
            return spec("ordinal", f"ordinal ({scale}): {shown}", ranks=ranks, scale=scale)
    if len(distinct) == len(texts) or (len(distinct) == len(present) and len(present) > 20):
        if not any(" " in t for t in distinct):
            return spec("dropped", "dropped: a distinct value per patient (an id in disguise)",
                        note="every patient has a different value: it identifies patients, it does not describe them")
    multiword = np.mean([len(t.split()) >= 3 for t in distinct])
    if len(distinct) > max(20, 0.5 * len(present)) and multiword >= 0.5:
        return spec("text", f"text: {len(distinct)} distinct phrases, read by the EHR sentence only")
    return _categorical_column(spec, [t for _, t in present], len(texts), missing > 0)


def _refuse_dates(name: str, present: list[tuple[int, str]]) -> None:
    dated = [(r, t) for r, t in present if DATE_PATTERN.match(t.lower())]
    named = bool(_name_tokens(name) & DATE_NAME_TOKENS)
    if dated and (len(dated) >= 0.8 * len(present) or named):
        row, text = dated[0]
    elif named:
        row, text = present[0]
    else:
        return
    raise CovariateError(
        f"{text!r} is a date: a calendar date is not a covariate. Turn it into a duration "
        f"(e.g. days from diagnosis to treatment) in a new column, or leave it out with --exclude '{name}'",
        None, row, name)


def _sentinel_note(distinct: np.ndarray) -> str:
    """A note when the largest code looks like a "missing" code (9, 99, 999 well above the rest)."""
    if 3 <= len(distinct) <= 12 and distinct[-1] in (9, 99, 999) and distinct[-1] > 2 * max(distinct[-2], 1):
        return (f"the value {distinct[-1]:g} stands apart from the other codes ({_fmt(distinct[0])}-"
                f"{_fmt(distinct[-2])}); if it means 'not recorded', recode it as empty: it is read as a number")
    return ""


def _numeric_column(spec, name: str, numbers: np.ndarray, n_rows: int, tokens: set[str]) -> ColumnSpec:
    column = _numeric_column_kind(spec, name, numbers, n_rows, tokens)
    if column.kind != "dropped" and not column.note:
        integer = bool(np.all(numbers == np.round(numbers)))
        column.note = _sentinel_note(np.unique(numbers)) if integer else ""
    return column


def _numeric_column_kind(spec, name: str, numbers: np.ndarray, n_rows: int, tokens: set[str]) -> ColumnSpec:
    integer = bool(np.all(numbers == np.round(numbers)))
    distinct = np.unique(numbers)
    low, high = float(numbers.min()), float(numbers.max())
    limits = {"minimum": low, "maximum": high, "integer": integer}
    if integer and len(distinct) == n_rows == len(numbers) and high - low == n_rows - 1:
        return spec("dropped", "dropped: the numbers 1..N, one per patient (an id in disguise)",
                    note="consecutive whole numbers, one per patient: a row number or id, not a measurement")
    if integer and len(distinct) == n_rows == len(numbers) >= 10 and (
            bool(np.all(np.diff(numbers) > 0)) or tokens & ID_NAME_TOKENS):
        why = "increasing down the file" if np.all(np.diff(numbers) > 0) else "named like an id"
        return spec("dropped", f"dropped: a distinct whole number per patient, {why} (an id in disguise)",
                    note=f"a different whole number for every patient, {why}: a case number, not a measurement")
    if len(distinct) == 2:
        counts = {v: int(np.sum(numbers == v)) for v in distinct}
        if set(distinct) == {0.0, 1.0}:  # already a 0/1 code: keep its meaning
            first, second = 0.0, 1.0
        else:  # two other codes (1/2): the more frequent one is the reference
            first = max(distinct, key=lambda v: (counts[v], -v))
            second = [v for v in distinct if v != first][0]
        return spec("binary", f"binary: {_fmt(first)} = 0, {_fmt(second)} = 1",
                    levels=[_fmt(first), _fmt(second)], **limits)
    if integer and 3 <= len(distinct) <= 50 and tokens & CATEGORY_NAME_TOKENS and not tokens & ORDINAL_NAME_TOKENS:
        spec_ = _categorical_column(spec, [_fmt(v) for v in numbers], n_rows, len(numbers) < n_rows)
        spec_.how = spec_.how.replace("categorical", "categorical (whole-number codes; the name says category)", 1)
        return spec_
    if integer and len(distinct) <= 10 and tokens & ORDINAL_NAME_TOKENS:
        ranks = {_fmt(v): float(v) for v in distinct}
        return spec("ordinal", f"ordinal (numeric codes {_fmt(low)}-{_fmt(high)}; the name says scale)",
                    ranks=ranks, scale="numeric codes", **limits)
    skew = _skewness(numbers)
    log = bool(low >= 0 and skew > 2.0)
    how = f"numeric {low:.4g} to {high:.4g}" + (f", log1p (skewness {skew:.1f})" if log else "") + ", standardised"
    return spec("numeric", how, log=log, **limits)


def _categorical_column(spec, texts: list[str], n_rows: int, has_missing: bool) -> ColumnSpec:
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    if has_missing:
        counts[MISSING_LEVEL] = n_rows - len(texts)
    rare = max(5, int(math.ceil(0.02 * n_rows)))
    kept = sorted((k for k, c in counts.items() if c >= rare), key=lambda k: (-counts[k], k))
    pooled = sorted(k for k in counts if k not in kept)
    if pooled and sum(counts[k] for k in pooled) >= rare:
        kept.append(OTHER_LEVEL)
    elif pooled and kept:  # too few to be a level of their own: they join the most frequent level
        pass
    if len(kept) < 2:
        return spec("dropped", f"dropped: fewer than two levels with {rare}+ patients ({len(counts)} levels)",
                    note=f"no two of its {len(counts)} levels have {rare} or more patients each: "
                         f"nothing to compare", pooled=pooled)
    how = f"categorical: {len(kept)} levels, reference {kept[0]!r}"
    if pooled:
        how += f"; {len(pooled)} rare level(s) pooled into {OTHER_LEVEL!r}" if OTHER_LEVEL in kept else \
            f"; {len(pooled)} rare level(s) joined {kept[0]!r}"
    return spec("categorical", how, levels=kept, pooled=pooled)


def _skewness(values: np.ndarray) -> float:
    sd = values.std()
    return float(np.mean(((values - values.mean()) / sd) ** 3)) if sd > 0 else 0.0


def _fmt(value: float) -> str:
    return f"{value:g}"


# ------------------------------------------------------------------------------- encoding
def parse_covariate_value(spec: ColumnSpec, value: Any) -> str | None:
    """A value for one model column, checked against what the model was trained with; ``None`` = missing.

    Used for new patients (the ``--ehr`` file, the Slicer form): a category the model never saw is
    refused rather than guessed, a number is refused if it is not a number.
    """
    if _is_missing(value):
        return None
    text = str(value).strip()
    if spec.kind in ("numeric",):
        number = _as_number(text)
        if number is None:
            raise CovariateError(f"{value!r} is not a number", spec.name)
        if abs(number) > LARGEST_NUMBER:
            raise CovariateError(f"{value!r} is beyond +-{LARGEST_NUMBER:g}", spec.name)
        return text
    if spec.kind == "binary":
        number = _as_number(text)
        if number is None or _fmt(number) not in spec.levels:
            raise CovariateError(f"{value!r} is not one of the values this model knows: {', '.join(spec.levels)}",
                                 spec.name)
        return _fmt(number)
    if spec.kind == "ordinal":
        key = _fmt(_as_number(text)) if _as_number(text) is not None else text
        if key in spec.ranks:
            return key
        by_words = {_words(k): k for k in spec.ranks}
        if _words(text) in by_words:
            return by_words[_words(text)]
        raise CovariateError(f"{value!r} is not on this column's scale; expected one of: {', '.join(spec.ranks)}",
                             spec.name)
    if spec.kind == "categorical":
        key = _fmt(_as_number(text)) if _as_number(text) is not None and text not in spec.levels else text
        if key in spec.levels or key in spec.pooled:
            return key
        raise CovariateError(f"{value!r} is not a level this model knows; expected one of: "
                             f"{', '.join(l for l in spec.levels + spec.pooled if l not in (OTHER_LEVEL, MISSING_LEVEL))}",
                             spec.name)
    return text  # text columns: any phrase


def parse_patient_values(values: Any, extra_columns: Sequence[ColumnSpec], fields_recorded: Sequence[str] | None = None
                         ) -> tuple[EHRRecord, dict[str, str | None]]:
    """A patient's values (``--ehr`` JSON, the Slicer form) -> the EHR record and the extra covariates.

    ``extra_columns`` are the model's kept columns beyond the schema. A key that is neither an EHR
    field nor one of them is refused (a typo would otherwise be dropped silently); age is required
    only if the training cohort recorded it (``fields_recorded``; None: unknown, required).
    Needs no torch: the Slicer process validates the form with it before any worker starts.
    """
    if not isinstance(values, Mapping):
        raise EHRValidationError("the patient must be one JSON object of field: value pairs")
    extra = {c.name: c for c in extra_columns}
    unknown = sorted(k for k in values if k not in extra and k not in EHR_FIELDS)
    if unknown:
        raise EHRValidationError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; this model reads the EHR fields "
            f"{', '.join(EHR_FIELDS)}" + (f" and the columns {', '.join(extra)}" if extra else ""))
    required = ("age",) if fields_recorded is None or "age" in fields_recorded else ()
    record = parse_ehr({k: v for k, v in values.items() if k not in extra}, required=required)
    covariates = {}
    for name, spec in extra.items():
        try:
            covariates[name] = parse_covariate_value(spec, values.get(name))
        except CovariateError as error:
            raise EHRValidationError(error.detail, name) from None
    return record, covariates


def encode_covariates(rows: Sequence[Mapping[str, str | None]], specs: Sequence[ColumnSpec]) -> tuple[np.ndarray, list[str], list[str]]:
    """``[N, width]`` numbers (NaN = missing), the feature names, and each feature's source column."""
    columns, names, sources = [], [], []
    for spec in specs:
        if spec.kind not in MODEL_KINDS:
            continue
        values = [row.get(spec.name) for row in rows]
        columns.append(_encode_column(spec, values))
        names.extend(spec.feature_names())
        sources.extend([spec.name] * spec.width)
    if not columns:
        return np.empty((len(rows), 0)), [], []
    return np.concatenate(columns, axis=1), names, sources


def _encode_column(spec: ColumnSpec, values: Sequence[str | None]) -> np.ndarray:
    out = np.full((len(values), spec.width), np.nan)
    for i, value in enumerate(values):
        if spec.kind == "categorical":
            level = MISSING_LEVEL if value is None else value
            if level not in spec.levels:
                level = OTHER_LEVEL if OTHER_LEVEL in spec.levels else spec.levels[0]
            out[i] = [float(level == l) for l in spec.levels[1:]]
            continue
        if value is None:
            continue
        if spec.kind == "numeric":
            number = float(value)
            out[i, 0] = math.log1p(max(number, 0.0)) if spec.log else number
        elif spec.kind == "binary":
            out[i, 0] = float(_fmt(float(value)) == spec.levels[1])
        elif spec.kind == "ordinal":
            out[i, 0] = spec.ranks[value]
    return out


def covariate_sentence(row: Mapping[str, str | None], specs: Sequence[ColumnSpec]) -> str:
    """``"grade: II; centre: 3"``: every kept column with a value, for the EHR sentence."""
    parts = [f"{spec.name}: {row[spec.name]}" for spec in specs if spec.kept and row.get(spec.name) is not None]
    return "; ".join(parts) + ("." if parts else "")


# --------------------------------------------------------------------------------- reports
def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float | None:
    """Harrell's C of a risk score (higher = worse); ``None`` when no pair of patients can be compared."""
    from lifelines.utils import concordance_index

    try:
        return float(concordance_index(time, -np.asarray(risk, float), event))
    except ZeroDivisionError:
        return None


def univariable_c_index(spec: ColumnSpec, rows: Sequence[Mapping[str, str | None]], time: np.ndarray,
                        event: np.ndarray) -> float | None:
    """Harrell's C of a one-column Cox fit on all patients (descriptive, in-sample; >= 0.5 by construction)."""
    from .cox import fit_penalised_cox

    if spec.kind not in MODEL_KINDS:
        return None
    values = _encode_column(spec, [row.get(spec.name) for row in rows])
    missing = np.isnan(values)
    mean = np.where(missing.all(0), 0.0, np.nanmean(np.where(missing, np.nan, values), axis=0)) if values.size else values
    x = np.where(missing, mean, values)
    if missing.any():
        x = np.concatenate([x, missing.any(1, keepdims=True).astype(float)], axis=1)
    sd = x.std(0)
    x = (x[:, sd > 0] - x[:, sd > 0].mean(0)) / sd[sd > 0]
    if x.shape[1] == 0:
        return 0.5
    beta = fit_penalised_cox(x, time, event, penalty=0.01)
    return harrell_c(time, event, x @ beta)


def column_table(specs: Sequence[ColumnSpec], roles: Mapping[str, str] | None = None) -> str:
    """The table training prints: each column, how it is read, the share missing, its univariable C-index."""
    lines = [f"{'column':<22}{'read as':<70}{'missing':>8}{'C-index':>9}"]
    for role, column in (roles or {}).items():
        lines.append(f"{column[:21]:<22}{role:<70}{'':>8}{'':>9}")
    for spec in specs:
        c = "" if spec.c_index is None else f"{spec.c_index:.3f}"
        how = spec.how if len(spec.how) <= 68 else spec.how[:65] + "..."
        lines.append(f"{spec.name[:21]:<22}{how:<70}{100 * spec.missing:>7.1f}%{c:>9}")
    lines.append("C-index: of a one-column Cox fit on all patients (descriptive; the model's is cross-validated).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- form
@dataclass
class FormField:
    """One input of a generated form: the Slicer module builds a widget from it."""

    name: str
    label: str
    widget: str  # "number", "choice" or "text"
    choices: list[str] = field(default_factory=list)  # "choice": "" first (= not recorded)
    minimum: float | None = None
    maximum: float | None = None
    decimals: int = 2
    tooltip: str = ""


def form_fields(specs: Sequence[ColumnSpec]) -> list[FormField]:
    """Typed inputs for every extra covariate a model was trained with (schema fields have their own form)."""
    fields_: list[FormField] = []
    for spec in specs:
        if not spec.kept:
            continue
        tooltip = f"{spec.how}; {100 * spec.missing:.0f}% missing in the training cohort; leave empty when not recorded"
        if spec.kind == "numeric":
            span = (spec.maximum or 0) - (spec.minimum or 0)
            low, high = (spec.minimum or 0) - span, (spec.maximum or 0) + span  # a margin beyond the cohort
            if (spec.minimum or 0) >= 0:
                low = 0.0
            fields_.append(FormField(spec.name, spec.name, "number", minimum=low, maximum=high,
                                     decimals=0 if spec.integer else 2,
                                     tooltip=f"{tooltip}; training range {_fmt(spec.minimum)}-{_fmt(spec.maximum)}"))
        elif spec.kind == "binary":
            fields_.append(FormField(spec.name, spec.name, "choice", [""] + list(spec.levels), tooltip=tooltip))
        elif spec.kind == "ordinal":
            order = sorted(spec.ranks, key=lambda k: (spec.ranks[k], k))
            fields_.append(FormField(spec.name, spec.name, "choice", [""] + order, tooltip=tooltip))
        elif spec.kind == "categorical":
            levels = [l for l in spec.levels + spec.pooled if l not in (OTHER_LEVEL, MISSING_LEVEL)]
            fields_.append(FormField(spec.name, spec.name, "choice", [""] + levels, tooltip=tooltip))
        else:
            fields_.append(FormField(spec.name, spec.name, "text", tooltip=tooltip))
    return fields_
