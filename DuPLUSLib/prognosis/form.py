"""The EHR form a GUI shows, generated from the EHR schema (:mod:`.ehr`) so the two cannot drift.

Each coded field offers its canonical codes, with ``""`` first for "not recorded"; the numeric
fields carry their valid range. The Slicer Prognosis module builds its parameter-node annotations
(``Choice``, ``WithinRange``) from these tables.
"""

from __future__ import annotations

from . import ehr

__all__ = ["NOT_RECORDED", "FORM_CHOICES", "FORM_RANGES", "PACK_YEARS_NOT_RECORDED", "form_values_to_ehr"]

NOT_RECORDED = ""
# The pack-years spin box has no empty state: one below its range means "not recorded".
PACK_YEARS_NOT_RECORDED = ehr.PACK_YEARS_RANGE[0] - 1.0


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
    "age": ehr.AGE_RANGE,
    "pack_years": (PACK_YEARS_NOT_RECORDED, ehr.PACK_YEARS_RANGE[1]),
}


def form_values_to_ehr(values: dict) -> dict:
    """The form's values as EHR input: not-recorded fields left out (``""``, None, pack-years below range)."""
    clean = {}
    for name, value in values.items():
        if value in (NOT_RECORDED, None):
            continue
        if name == "pack_years" and float(value) < ehr.PACK_YEARS_RANGE[0]:
            continue
        clean[name] = value
    return clean
