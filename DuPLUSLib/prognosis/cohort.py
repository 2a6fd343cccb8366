"""A survival cohort from any CSV: column mapping, validation, and the bundled example cohorts.

Cohorts come from hospitals with their own column names and codes, so nothing here assumes a
layout: a column map (JSON) says which column holds which EHR field, and may give constants for
fields a cohort shares (the larynx cohort is all ``site: larynx``). Every cell is validated where it
enters; the first bad one stops loading with a message naming its row and column, so nothing is
trained on, or written from, a cohort with a silent error.

Column map format::

    {"columns": {"age": "AgeAtDiagnosis", "stage": "AJCC_stage", "patient_id": "MRN"},
     "constants": {"site": "larynx"}}

Without a map, columns named like the EHR fields (``age``, ``stage``, ``t_stage``...; any case) are
read by the schema, and ``patient_id`` or ``id`` is the patient id if present. **Every other column
is a covariate too** (:mod:`covariates` types it: numeric, binary, ordinal, categorical, text), unless
``columns`` / ``exclude`` say otherwise; a column named like a schema field whose values are not the
schema's codes (``sex`` coded 1/2) is typed automatically, with a note, instead of being refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .covariates import ColumnSpec, CovariateError, parse_covariate_value, type_column, univariable_c_index
from .ehr import _PARSERS, EHR_FIELDS, NUMERIC_FEATURES, EHRRecord, EHRValidationError, numeric_encoding, parse_ehr

__all__ = ["Cohort", "CohortError", "ColumnMap", "load_cohort", "cohort_from_frame", "larynx_frame"]

EVENT_TRUE = {"1", "1.0", "true", "yes", "y", "dead", "death", "died", "event", "progressed"}
SCHEMA_FIELD_CODES = {"age": "years 0-120", "sex": "male/female", "site": "head-and-neck sites",
                      "t_stage": "T codes", "n_stage": "N codes", "m_stage": "M codes", "stage": "I-IV",
                      "hpv": "positive/negative", "smoking": "never/former/current", "pack_years": "0-300",
                      "ecog": "0-4", "treatment": "treatment names"}
EVENT_FALSE = {"0", "0.0", "false", "no", "n", "alive", "censored"}
ID_COLUMNS = ("patient_id", "id", "patient", "subject_id", "mrn")


class CohortError(EHRValidationError):
    """A cohort that cannot be used: a missing column, a bad cell, no events, duplicate ids."""


@dataclass(frozen=True)
class ColumnMap:
    """Which CSV column holds which EHR field, and fields every patient shares."""

    columns: Mapping[str, str] = field(default_factory=dict)  # EHR field (or patient_id) -> column
    constants: Mapping[str, Any] = field(default_factory=dict)  # EHR field -> value

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ColumnMap":
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CohortError(f"column map '{path}' is unreadable: {error}") from None
        if not isinstance(values, dict) or set(values) - {"columns", "constants"}:
            raise CohortError(f"column map '{path}' must be an object with 'columns' and/or 'constants'")
        known = set(EHR_FIELDS) | {"patient_id"}
        for section in ("columns", "constants"):
            unknown = sorted(set(values.get(section, {})) - known)
            if unknown:
                raise CohortError(
                    f"column map '{path}': unknown field(s) {', '.join(unknown)} in '{section}'; "
                    f"the fields are: patient_id, {', '.join(EHR_FIELDS)}"
                )
        return cls(dict(values.get("columns", {})), dict(values.get("constants", {})))

    def resolve(self, header: Sequence[str]) -> dict[str, str]:
        """Field -> column, completing the explicit map with same-named columns."""
        by_lower = {name.lower(): name for name in header}
        mapping = dict(self.columns)
        for name in EHR_FIELDS:
            if name not in mapping and name not in self.constants and name in by_lower:
                mapping[name] = by_lower[name]
        if "patient_id" not in mapping:
            for candidate in ID_COLUMNS:
                if candidate in by_lower:
                    mapping["patient_id"] = by_lower[candidate]
                    break
        return mapping


@dataclass
class Cohort:
    """Validated patients: EHR, follow-up time, event, and optionally image and segmentation files."""

    ids: list[str]
    records: list[EHRRecord]
    time: np.ndarray  # float, in the cohort's unit
    event: np.ndarray  # bool: True = the event (death) was observed
    images: list[Path] | None = None
    segmentations: list[Path] | None = None
    source: str = ""
    columns: list[ColumnSpec] = field(default_factory=list)  # how every covariate column is read
    covariates: list[dict[str, str | None]] = field(default_factory=list)  # per patient: extra column -> value
    roles: dict[str, str] = field(default_factory=dict)  # "time" / "event" / "patient id" -> column

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def extra_columns(self) -> list[ColumnSpec]:
        """The kept covariates beyond the schema (what the model's form must ask for)."""
        return [c for c in self.columns if c.kept]

    @property
    def notes(self) -> list[str]:
        return [f"column '{c.name}': {c.note}" for c in self.columns if c.note]

    def subset(self, rows: Sequence[int]) -> "Cohort":
        rows = list(rows)
        pick = lambda items: None if items is None else [items[i] for i in rows]  # noqa: E731
        return Cohort([self.ids[i] for i in rows], [self.records[i] for i in rows], self.time[rows],
                      self.event[rows], pick(self.images), pick(self.segmentations), self.source,
                      self.columns, pick(self.covariates) or [], self.roles)


def load_cohort(
    path: str | os.PathLike[str],
    time_column: str,
    event_column: str,
    column_map: ColumnMap | None = None,
    image_column: str | None = None,
    segmentation_column: str | None = None,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> Cohort:
    """Read and validate a cohort CSV; image paths are taken relative to the CSV's folder.

    ``columns`` limits the covariates to those named; ``exclude`` leaves the named ones out.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise CohortError(f"cohort file '{path}' does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CohortError(f"cohort file '{path}' is not a readable CSV: {error}") from None
    return cohort_from_frame(frame, time_column, event_column, column_map, image_column,
                             segmentation_column, base=path.parent, source=str(path), columns=columns,
                             exclude=exclude)


def cohort_from_frame(
    frame,
    time_column: str,
    event_column: str,
    column_map: ColumnMap | None = None,
    image_column: str | None = None,
    segmentation_column: str | None = None,
    base: Path | None = None,
    source: str = "",
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> Cohort:
    """Validate a pandas DataFrame (any dtypes) as a cohort; see :func:`load_cohort`."""
    column_map = column_map or ColumnMap()
    frame = frame.astype(object).where(frame.notna(), "")
    header = [str(c) for c in frame.columns]
    frame.columns = header
    mapping = column_map.resolve(header)
    roles = {"time": time_column, "event": event_column}
    if "patient_id" in mapping:
        roles["patient id"] = mapping["patient_id"]
    if image_column:
        roles["image"] = image_column
    if segmentation_column:
        roles["segmentation"] = segmentation_column
    needed = {**roles, **{f: c for f, c in mapping.items() if f != "patient_id"}}
    for role, column in needed.items():
        if column not in header:
            raise CohortError(
                f"column '{column}' (for {role}) is not in the cohort; its columns are: {', '.join(header)}"
            )
    _check_column_choice(header, roles, columns, exclude)
    if len(frame) == 0:
        raise CohortError("the cohort has no rows")
    if bool(image_column) != bool(segmentation_column):
        raise CohortError("image features need both an image column and a segmentation column")

    role_columns = set(roles.values())
    chosen = [c for c in header if c not in role_columns and c not in set(exclude)
              and (columns is None or c in columns)]
    explicit = {f: c for f, c in column_map.columns.items() if f != "patient_id"}
    left_out = sorted(c for c in explicit.values() if c in set(exclude) or (columns is not None and c not in columns))
    if left_out:  # the map names them, the command leaves them out: say which wins rather than guess
        raise CohortError(f"column(s) {', '.join(left_out)} are named in the column map and left out by "
                          "--exclude or --columns; remove them from the map, or from --exclude (add them to --columns)")
    column_of = {f: c for f, c in mapping.items()
                 if f != "patient_id" and (f in explicit or c in chosen)}
    # a column named like a schema field that does not hold the schema's codes is typed automatically
    retyped: dict[str, str] = {}
    for name, column in list(column_of.items()):
        if name not in explicit and _mostly_not_schema_codes(name, frame[column]):
            retyped[column] = name
            del column_of[name]
    records_rows = frame.to_dict("records")
    records, times, events, ids = [], [], [], []
    for index, row in enumerate(records_rows, start=1):
        values = {**column_map.constants, **{f: row[c] for f, c in column_of.items()}}
        try:
            records.append(parse_ehr(values, required=()))
        except EHRValidationError as error:
            raise CohortError(_strip_where(error), error.field, index, column_of.get(error.field or "", None)) from None
        times.append(_time_value(row[time_column], index, time_column))
        events.append(_event_value(row[event_column], index, event_column))
        ids.append(str(row[mapping["patient_id"]]).strip() if "patient_id" in mapping else str(index))
    _check_unique_ids(ids, mapping.get("patient_id"))
    time, event = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    if not event.any():
        raise CohortError(f"column '{event_column}': no patient has an event; survival cannot be learned from a cohort with no events")
    if np.ptp(time) == 0:
        raise CohortError(f"column '{time_column}': every follow-up time is {time[0]:g}; survival cannot be learned from constant times")

    specs = _schema_specs(column_of, records, frame, time, event)
    schema_columns = set(column_of.values())
    extras = [c for c in chosen if c not in schema_columns]
    covariates: list[dict[str, str | None]] = [{} for _ in records_rows]
    for column in extras:
        try:
            spec = type_column(column, list(frame[column]))
        except CovariateError as error:
            raise CohortError(error.detail, None, error.row, column) from None
        if column in retyped:
            field_ = retyped[column]
            spec.note = (f"named like the schema field '{field_}' but its values are not the schema's codes "
                         f"({SCHEMA_FIELD_CODES[field_]}); read automatically" + (f"; {spec.note}" if spec.note else ""))
            spec.how = f"{spec.how} [not the schema's {field_} codes]"
        if spec.kept:
            for patient, row in zip(covariates, records_rows):
                patient[column] = parse_covariate_value(spec, row[column])
            spec.c_index = univariable_c_index(spec, covariates, time, event)
        specs.append(spec)
    _refuse_without_covariates(specs, header, roles, columns, exclude)
    images = segmentations = None
    if image_column:
        base = base or Path.cwd()
        images = [_file_cell(row[image_column], base, i, image_column) for i, row in enumerate(records_rows, 1)]
        segmentations = [_file_cell(row[segmentation_column], base, i, segmentation_column)
                         for i, row in enumerate(records_rows, 1)]
    return Cohort(ids, records, time, event, images, segmentations, source, specs, covariates, roles)


def _check_column_choice(header: Sequence[str], roles: Mapping[str, str], columns: Sequence[str] | None,
                         exclude: Sequence[str]) -> None:
    """``--columns`` / ``--exclude`` must name existing columns, and never the time, event or id."""
    if roles["time"] == roles["event"]:
        raise CohortError(f"column '{roles['time']}' is named as both the time and the event; name two different columns")
    for option, names in (("--columns", columns or ()), ("--exclude", exclude)):
        unknown = [n for n in names if n not in header]
        if unknown:
            raise CohortError(f"{option} names {', '.join(map(repr, unknown))}, which the cohort does not have; "
                              f"its columns are: {', '.join(header)}")
    for role, column in roles.items():
        if columns and column in columns:
            raise CohortError(f"column '{column}' is the {role}; it cannot also be a covariate: remove it from --columns",
                              None, None, column)


def _mostly_not_schema_codes(field_: str, values) -> bool:
    """True when most of a column's values fail the schema field's parser (another coding, not typos)."""
    present = [v for v in values if not _is_missing_cell(v)]
    if not present:
        return False
    failures = 0
    for value in present:
        try:
            _PARSERS[field_](value)
        except EHRValidationError:
            failures += 1
    return failures > 0.5 * len(present)


def _is_missing_cell(value: Any) -> bool:
    from .ehr import _is_missing

    return _is_missing(value)


def _schema_specs(column_of: Mapping[str, str], records: Sequence[EHRRecord], frame, time: np.ndarray,
                  event: np.ndarray) -> list[ColumnSpec]:
    """Rows of the column table for the schema columns (read by the EHR parser)."""
    from .covariates import harrell_c
    from .cox import fit_penalised_cox

    specs = []
    numeric = np.stack([numeric_encoding(r) for r in records])
    for field_, column in column_of.items():
        present = np.array([getattr(r, field_) is not None for r in records])
        spec = ColumnSpec(column, "schema", f"schema field '{field_}' ({SCHEMA_FIELD_CODES[field_]})",
                          round(1 - present.mean(), 4), schema_field=field_)
        values = {getattr(r, field_) for r in records} - {None}
        if len(values) <= 1:
            spec.how += ", constant"
            spec.note = "constant: read by the schema, but it cannot separate risks"
        else:
            x = numeric[:, NUMERIC_FEATURES.index(_numeric_name(field_))]
            if np.isfinite(x).sum() > 1 and np.nanstd(x) > 0:
                filled = np.where(np.isfinite(x), x, np.nanmean(x))
                z = ((filled - filled.mean()) / filled.std())[:, None]
                beta = fit_penalised_cox(z, time, event, 0.01)
                spec.c_index = harrell_c(time, event, z @ beta)
        specs.append(spec)
    return specs


def _numeric_name(field_: str) -> str:
    return {"sex": "male", "site": "site_risk", "hpv": "hpv_positive", "treatment": "treatment_intensity"}.get(field_, field_)


def _refuse_without_covariates(specs: Sequence[ColumnSpec], header: Sequence[str], roles: Mapping[str, str],
                               columns: Sequence[str] | None, exclude: Sequence[str]) -> None:
    usable = [s for s in specs if (s.kind == "schema" and not s.note) or s.kept]
    if usable:
        return
    reasons = [f"'{s.name}': {s.note or s.how}" for s in specs]
    reasons += [f"'{c}': the {role}" for role, c in roles.items()]
    reasons += [f"'{c}': excluded" for c in exclude]
    if columns is not None:
        reasons += [f"'{c}': not in --columns" for c in header if c not in columns and c not in roles.values()
                    and c not in exclude]
    raise CohortError("the cohort has no usable covariate, so there is nothing to learn risk from: "
                      + "; ".join(reasons) + ". Add at least one column that varies between patients")


# ---------------------------------------------------------------------------------------- cells
def _strip_where(error: EHRValidationError) -> str:
    text = str(error)
    return text.split(": ", 1)[1] if error.field and text.startswith("field ") else text


def _time_value(value: Any, row: int, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CohortError(f"follow-up time {value!r} is not a number", "time", row, column) from None
    if not np.isfinite(number) or number <= 0:
        raise CohortError(f"follow-up time {value!r} must be a finite number > 0 (time from diagnosis or "
                          f"treatment start to the event or last contact)", "time", row, column)
    return number


def _event_value(value: Any, row: int, column: str) -> bool:
    text = str(value).strip().lower()
    if text in EVENT_TRUE:
        return True
    if text in EVENT_FALSE:
        return False
    raise CohortError(f"event {value!r} is not 1/0 (or yes/no, true/false, dead/alive); "
                      f"write 1 for the event and 0 for censored", "event", row, column)


def _file_cell(value: Any, base: Path, row: int, column: str) -> Path:
    text = str(value).strip()
    if not text:
        raise CohortError("no file given", None, row, column)
    path = Path(text)
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise CohortError(f"file '{path}' does not exist", None, row, column)
    return path


def _check_unique_ids(ids: Sequence[str], column: str | None) -> None:
    first_row: dict[str, int] = {}
    for row, patient in enumerate(ids, start=1):
        if patient in first_row:
            raise CohortError(
                f"patient id {patient!r} also appears in row {first_row[patient]}; each patient must appear once",
                "patient_id", row, column,
            )
        first_row[patient] = row


# ------------------------------------------------------------------------------ example cohorts
def larynx_frame():
    """lifelines' larynx cancer cohort (Kardaun 1983; 90 patients, time in years) as a cohort table.

    lifelines stores stage as dummy columns; here it becomes one ``stage`` column (I-IV), every
    patient gets ``site: larynx``, and ``patient_id`` is the row number.
    """
    import pandas as pd
    from lifelines.datasets import load_larynx

    data = load_larynx()
    stage_number = 1 + data["Stage_II"] + 2 * data["Stage_III"] + 3 * data["Stage_IV"]
    return pd.DataFrame({
        "patient_id": [f"larynx-{i + 1:03d}" for i in range(len(data))],
        "age": data["age"].astype(int),
        "stage": stage_number.map({1: "I", 2: "II", 3: "III", 4: "IV"}),
        "site": "larynx",
        "time_years": data["time"].astype(float),
        "death": data["death"].astype(int),
    })
