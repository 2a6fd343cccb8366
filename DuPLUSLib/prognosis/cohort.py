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
used, and ``patient_id`` or ``id`` is the patient id if present.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .ehr import EHR_FIELDS, EHRRecord, EHRValidationError, parse_ehr

__all__ = ["Cohort", "CohortError", "ColumnMap", "load_cohort", "cohort_from_frame", "larynx_frame"]

EVENT_TRUE = {"1", "1.0", "true", "yes", "y", "dead", "death", "died", "event", "progressed"}
EVENT_FALSE = {"0", "0.0", "false", "no", "n", "alive", "censored"}
ID_COLUMNS = ("patient_id", "id", "patient", "subject_id")


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
        except (OSError, json.JSONDecodeError) as error:
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

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> "Cohort":
        rows = list(rows)
        pick = lambda items: None if items is None else [items[i] for i in rows]  # noqa: E731
        return Cohort([self.ids[i] for i in rows], [self.records[i] for i in rows], self.time[rows],
                      self.event[rows], pick(self.images), pick(self.segmentations), self.source)


def load_cohort(
    path: str | os.PathLike[str],
    time_column: str,
    event_column: str,
    column_map: ColumnMap | None = None,
    image_column: str | None = None,
    segmentation_column: str | None = None,
) -> Cohort:
    """Read and validate a cohort CSV; image paths are taken relative to the CSV's folder."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise CohortError(f"cohort file '{path}' does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CohortError(f"cohort file '{path}' is not a readable CSV: {error}") from None
    return cohort_from_frame(frame, time_column, event_column, column_map, image_column,
                             segmentation_column, base=path.parent, source=str(path))


def cohort_from_frame(
    frame,
    time_column: str,
    event_column: str,
    column_map: ColumnMap | None = None,
    image_column: str | None = None,
    segmentation_column: str | None = None,
    base: Path | None = None,
    source: str = "",
) -> Cohort:
    """Validate a pandas DataFrame (any dtypes) as a cohort; see :func:`load_cohort`."""
    column_map = column_map or ColumnMap()
    header = [str(c) for c in frame.columns]
    mapping = column_map.resolve(header)
    needed = {"time": time_column, "event": event_column, **mapping}
    if image_column:
        needed["image"] = image_column
    if segmentation_column:
        needed["segmentation"] = segmentation_column
    for role, column in needed.items():
        if column not in header:
            raise CohortError(
                f"column '{column}' (for {role}) is not in the cohort; its columns are: {', '.join(header)}"
            )
    if len(frame) == 0:
        raise CohortError("the cohort has no rows")
    if bool(image_column) != bool(segmentation_column):
        raise CohortError("image features need both an image column and a segmentation column")

    column_of = {f: c for f, c in mapping.items() if f != "patient_id"}
    records, times, events, ids = [], [], [], []
    for index, row in enumerate(frame.to_dict("records"), start=1):
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
    images = segmentations = None
    if image_column:
        base = base or Path.cwd()
        images = [_file_cell(row[image_column], base, i, image_column) for i, row in enumerate(frame.to_dict("records"), 1)]
        segmentations = [_file_cell(row[segmentation_column], base, i, segmentation_column)
                         for i, row in enumerate(frame.to_dict("records"), 1)]
    return Cohort(ids, records, time, event, images, segmentations, source)


# ---------------------------------------------------------------------------------------- cells
def _strip_where(error: EHRValidationError) -> str:
    text = str(error)
    return text.split(": ", 1)[1] if error.field and text.startswith("field ") else text


def _time_value(value: Any, row: int, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CohortError(f"follow-up time {value!r} is not a number", "time", row, column) from None
    if not np.isfinite(number) or number < 0:
        raise CohortError(f"follow-up time {value!r} must be a finite number >= 0", "time", row, column)
    return number


def _event_value(value: Any, row: int, column: str) -> bool:
    text = str(value).strip().lower()
    if text in EVENT_TRUE:
        return True
    if text in EVENT_FALSE:
        return False
    raise CohortError(f"event {value!r} is not 1/0 (or yes/no, dead/alive)", "event", row, column)


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
