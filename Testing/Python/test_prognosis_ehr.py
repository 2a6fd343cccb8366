"""The EHR schema: spellings it accepts, values it refuses, the sentence and the numeric codes."""

import math

import numpy as np
import pytest

from DuPLUSLib.prognosis.ehr import (NUMERIC_FEATURES, EHRRecord, EHRValidationError, ehr_sentence,
                                     numeric_encoding, parse_ehr)


def test_clinical_spellings_become_canonical_codes():
    record = parse_ehr({"age": "63", "sex": "M", "site": "tonsil", "t_stage": "2", "n_stage": "n2b",
                        "m_stage": "M0", "stage": "4a", "hpv": "pos", "smoking": "ex-smoker", "ecog": 1.0,
                        "treatment": "CRT"})
    assert record == EHRRecord(age=63.0, sex="male", site="oropharynx", t_stage="T2", n_stage="N2b",
                               m_stage="M0", stage="IVA", hpv="positive", smoking="former", ecog=1,
                               treatment="chemoradiotherapy")


@pytest.mark.parametrize("age", [-3, 212, "sixty", float("inf")])
def test_impossible_age_is_refused_naming_the_field(age):
    with pytest.raises(EHRValidationError, match="age"):
        parse_ehr({"age": age})


@pytest.mark.parametrize("field, value", [("stage", "V"), ("t_stage", "T7"), ("n_stage", "N4"), ("m_stage", "M2")])
def test_unknown_stage_code_is_refused_listing_the_codes(field, value):
    with pytest.raises(EHRValidationError, match="expected one of") as caught:
        parse_ehr({"age": 60, field: value})
    assert caught.value.field == field


def test_a_misspelt_field_is_refused_rather_than_dropped():
    with pytest.raises(EHRValidationError, match="'stge'"):
        parse_ehr({"age": 60, "stge": "II"})


def test_age_is_required_for_a_patient_but_other_fields_may_be_missing():
    with pytest.raises(EHRValidationError, match="age is required"):
        parse_ehr({"stage": "II"})
    assert parse_ehr({"age": 70, "stage": "unknown", "hpv": ""}) == EHRRecord(age=70.0)


def test_sentence_reads_like_a_clinical_summary():
    record = EHRRecord(age=63, sex="male", site="oropharynx", t_stage="T2", n_stage="N1", m_stage="M0",
                       stage="III", hpv="positive", smoking="current", ecog=1, treatment="chemoradiotherapy")
    assert ehr_sentence(record) == ("A 63-year-old man with HPV-positive oropharyngeal cancer, T2 N1 M0, stage III, "
                                    "current smoker, ECOG 1, treated with chemoradiotherapy.")


def test_sentence_leaves_out_what_is_missing():
    assert ehr_sentence(EHRRecord(age=81, site="larynx", stage="I")) == "An 81-year-old patient with laryngeal cancer, stage I."
    assert ehr_sentence(EHRRecord()) == "A patient with cancer."


def test_numeric_codes_are_ordinal_with_nan_for_missing():
    values = numeric_encoding(EHRRecord(age=50, stage="IVA", hpv="negative"))
    as_dict = dict(zip(NUMERIC_FEATURES, values))
    assert as_dict["age"] == 50 and as_dict["stage"] == 4 and as_dict["hpv_positive"] == 0
    assert math.isnan(as_dict["ecog"]) and np.isnan(values).sum() == len(NUMERIC_FEATURES) - 3
