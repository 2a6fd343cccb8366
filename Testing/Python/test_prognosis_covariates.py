"""Every cohort column a covariate: how each column is read, what is dropped with a note, what is refused."""

import math

import numpy as np
import pandas as pd
import pytest

from DuPLUSLib.prognosis.cohort import CohortError, cohort_from_frame
from DuPLUSLib.prognosis.covariates import (CovariateError, column_table, encode_covariates, form_fields,
                                            parse_covariate_value, type_column)
from DuPLUSLib.prognosis.features import encode_patients


def clinic_frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """A clinic's export: schema columns, extra numeric, categorical, ordinal and text columns, an id."""
    rng = np.random.default_rng(seed)
    centre = rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2]).astype(object)
    centre[:4], centre[4:8] = "island", "harbour"  # two rare levels: pooled into "other"
    crp = rng.lognormal(2, 1.2, n).round(2).astype(object)
    crp[[10, 20, 30]] = ""  # missing
    grade = rng.choice(["I", "II", "III"], n)
    words = ["firm", "ulcerated", "mass", "left", "right", "painful", "small", "large", "lesion"]
    time = rng.exponential(30, n).round(1) + 0.5
    return pd.DataFrame({
        "patient_id": [f"P{i:03d}" for i in range(n)],
        "age": rng.integers(40, 85, n),
        "t_stage": rng.choice(["T1", "T2", "T3", "T4"], n),
        "haemoglobin": rng.normal(13, 1.5, n).round(1),
        "crp": crp,
        "centre": centre,
        "grade": grade,
        "differentiation": rng.choice(["well differentiated", "moderately differentiated", "poorly differentiated"], n),
        "performance": rng.choice(["ECOG 0", "ECOG 1", "ECOG 2"], n),
        "ploidy": rng.choice(["aneuploid", "diploid"], n),
        "note": [" ".join(rng.choice(words, 4)) + f" case {i}" for i in range(n)],
        "months": time,
        "dead": (rng.random(n) < 0.6).astype(int),
    })


@pytest.fixture(scope="module")
def clinic():
    return cohort_from_frame(clinic_frame(), "months", "dead")


def _spec(cohort, name):
    return next(c for c in cohort.columns if c.name == name)


def test_each_column_is_read_as_the_table_says(clinic):
    kinds = {c.name: c.kind for c in clinic.columns}
    assert kinds == {"age": "schema", "t_stage": "schema", "haemoglobin": "numeric", "crp": "numeric",
                     "centre": "categorical", "grade": "ordinal", "differentiation": "ordinal",
                     "performance": "ordinal", "ploidy": "categorical", "note": "text"}
    table = column_table(clinic.columns, clinic.roles)
    for spec in clinic.columns:
        row = next(line for line in table.splitlines() if line.startswith(spec.name))
        assert spec.how[:40] in row
    crp = _spec(clinic, "crp")
    assert crp.log and crp.missing == pytest.approx(3 / 120) and "log1p" in crp.how
    centre = _spec(clinic, "centre")
    assert centre.levels == ["north", "south", "east", "other"] and centre.pooled == ["harbour", "island"]
    assert _spec(clinic, "grade").ranks == {"I": 1, "II": 2, "III": 3}
    assert _spec(clinic, "differentiation").ranks["poorly differentiated"] == 3
    assert _spec(clinic, "performance").ranks == {"ECOG 0": 0, "ECOG 1": 1, "ECOG 2": 2}
    # the numbers the model gets are the ones the table promises
    values, names, sources = encode_covariates(clinic.covariates, clinic.columns)
    frame = clinic_frame()
    column = {n: values[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(column["haemoglobin"], frame["haemoglobin"])
    assert math.isnan(column["crp"][10]) and column["crp"][0] == pytest.approx(math.log1p(float(frame["crp"][0])))
    np.testing.assert_array_equal(column["grade"], frame["grade"].map({"I": 1, "II": 2, "III": 3}))
    assert column["centre=other"][:8].tolist() == [1.0] * 8 and sources.count("centre") == 3
    assert "note" not in sources and "ploidy=diploid" in names or "ploidy=aneuploid" in names


def test_every_column_enters_the_ehr_sentence(clinic):
    inputs = encode_patients(clinic.records, covariates=clinic.covariates, columns=clinic.extra_columns)
    sentence = inputs.sentences[0]
    row = clinic_frame().iloc[0]
    assert f"grade: {row['grade']}" in sentence and f"centre: {row['centre']}" in sentence
    assert f"note: {row['note']}" in sentence and sentence.startswith(f"A {row['age']}-year-old")
    assert inputs.extra.shape == (120, len(inputs.extra_names))


def test_constant_and_id_like_columns_are_dropped_with_a_note():
    frame = clinic_frame()
    frame["country"] = "NL"
    frame["accession"] = [f"AC{i:05d}" for i in range(len(frame))]
    frame["row_number"] = np.arange(1, len(frame) + 1)
    cohort = cohort_from_frame(frame, "months", "dead")
    notes = "\n".join(cohort.notes)
    assert "column 'country': every patient with a value has 'NL'" in notes
    assert "column 'accession': every patient has a different value" in notes
    assert "column 'row_number': consecutive whole numbers" in notes
    assert all(_spec(cohort, c).kind == "dropped" for c in ("country", "accession", "row_number"))


def test_a_single_binary_covariate_is_used_not_ignored():
    """The tongue-cancer case of the issue: one covariate, DNA ploidy; it must be read, not dropped."""
    frame = clinic_frame()[["ploidy", "months", "dead"]]
    cohort = cohort_from_frame(frame, "months", "dead")
    assert [c.name for c in cohort.extra_columns] == ["ploidy"]
    inputs = encode_patients(cohort.records, covariates=cohort.covariates, columns=cohort.extra_columns)
    assert inputs.extra.shape == (120, 1) and set(np.unique(inputs.extra)) == {0.0, 1.0}


def test_a_cohort_with_no_usable_column_is_refused_saying_why():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "country": ["NL"] * 4, "code": ["x1", "x2", "x3", "x4"],
                          "time": [1, 2, 3, 4], "death": [1, 0, 1, 1]})
    with pytest.raises(CohortError, match=r"no usable covariate.*'country': every patient.*'code': every patient has a different value"):
        cohort_from_frame(frame, "time", "death")


def test_columns_and_exclude_choose_the_covariates():
    cohort = cohort_from_frame(clinic_frame(), "months", "dead", columns=["age", "grade", "crp"])
    assert [c.name for c in cohort.columns] == ["age", "crp", "grade"]  # schema fields first, then file order
    cohort = cohort_from_frame(clinic_frame(), "months", "dead", exclude=["note", "centre", "t_stage"])
    assert {"note", "centre", "t_stage"}.isdisjoint(c.name for c in cohort.columns)
    with pytest.raises(CohortError, match="--exclude names 'centr'.*its columns are"):
        cohort_from_frame(clinic_frame(), "months", "dead", exclude=["centr"])


def test_a_column_named_as_covariate_and_time_is_refused():
    with pytest.raises(CohortError, match="column 'months' is the time; it cannot also be a covariate"):
        cohort_from_frame(clinic_frame(), "months", "dead", columns=["age", "months"])
    with pytest.raises(CohortError, match="column 'dead' is the event; it cannot also be a covariate"):
        cohort_from_frame(clinic_frame(), "months", "dead", columns=["dead"])
    with pytest.raises(CohortError, match="named as both the time and the event"):
        cohort_from_frame(clinic_frame(), "months", "months")


@pytest.mark.parametrize("cell", ["2003-04-17", "17/04/2003", "17 Apr 2003"])
def test_a_date_column_is_refused_naming_row_column_and_fix(cell):
    frame = clinic_frame()
    frame["diagnosed"] = ["2001-01-0%d" % (1 + i % 9) for i in range(len(frame))]
    frame.loc[0, "diagnosed"] = cell
    with pytest.raises(CohortError, match=rf"row 1, column 'diagnosed': '{cell}' is a date.*--exclude 'diagnosed'"):
        cohort_from_frame(frame, "months", "dead")


def test_a_numeric_column_named_as_a_date_is_refused():
    frame = clinic_frame()
    frame["ENTRY_DT"] = np.arange(len(frame)) * 7 + 2000
    with pytest.raises(CohortError, match="column 'ENTRY_DT'.*is a date"):
        cohort_from_frame(frame, "months", "dead")


@pytest.mark.parametrize("cell", ["0", "-3"])
def test_a_follow_up_time_of_zero_or_less_is_refused(cell):
    frame = clinic_frame()
    frame["months"] = frame["months"].astype(object)
    frame.loc[4, "months"] = cell
    with pytest.raises(CohortError, match=r"row 5, column 'months': follow-up time .* must be a finite number > 0"):
        cohort_from_frame(frame, "months", "dead")


def test_an_event_that_is_not_0_1_yes_no_is_refused():
    frame = clinic_frame()
    frame["dead"] = frame["dead"].astype(object)
    frame.loc[2, "dead"] = "2"
    with pytest.raises(CohortError, match=r"row 3, column 'dead': event '2' is not 1/0.*write 1 for the event"):
        cohort_from_frame(frame, "months", "dead")


def test_a_schema_named_column_with_other_codes_is_typed_automatically_with_a_note():
    frame = clinic_frame()
    frame["sex"] = np.where(np.arange(len(frame)) % 3 == 0, 2, 1)
    cohort = cohort_from_frame(frame, "months", "dead")
    sex = _spec(cohort, "sex")
    assert sex.kind == "binary" and sex.levels == ["1", "2"]
    assert any("named like the schema field 'sex'" in n for n in cohort.notes)
    # a single typo in a real schema column is still refused
    frame = clinic_frame()
    frame["t_stage"] = frame["t_stage"].astype(object)
    frame.loc[6, "t_stage"] = "T7"
    with pytest.raises(CohortError, match="row 7, column 't_stage': unknown T stage code 'T7'"):
        cohort_from_frame(frame, "months", "dead")


def test_integer_codes_named_like_a_category_are_one_hot():
    spec = type_column("inst", [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 4, 4, 4, 4, 4])
    assert spec.kind == "categorical" and spec.levels[0] in ("1", "2", "3", "4")
    spec = type_column("ph.ecog", [0, 1, 2, 1, 0, 3, 1, 2, 0, 1])
    assert spec.kind == "ordinal" and spec.ranks["3"] == 3


def test_a_new_patients_value_is_checked_against_the_models_column(clinic):
    centre, grade, crp = (_spec(clinic, n) for n in ("centre", "grade", "crp"))
    assert parse_covariate_value(centre, "island") == "island" and parse_covariate_value(grade, " II ") == "II"
    assert parse_covariate_value(crp, "") is None
    with pytest.raises(CovariateError, match="'atlantis' is not a level this model knows; expected one of: north"):
        parse_covariate_value(centre, "atlantis")
    with pytest.raises(CovariateError, match="'IV' is not on this column's scale"):
        parse_covariate_value(grade, "IV")
    with pytest.raises(CovariateError, match="'high' is not a number"):
        parse_covariate_value(crp, "high")


def test_the_form_fields_follow_the_columns(clinic):
    fields = {f.name: f for f in form_fields(clinic.columns)}
    assert set(fields) == {"haemoglobin", "crp", "centre", "grade", "differentiation", "performance", "ploidy", "note"}
    assert fields["grade"].widget == "choice" and fields["grade"].choices == ["", "I", "II", "III"]
    assert fields["centre"].choices == ["", "north", "south", "east", "harbour", "island"]
    assert fields["haemoglobin"].widget == "number" and fields["haemoglobin"].minimum == 0
    assert fields["note"].widget == "text"


def test_case_numbers_and_missing_codes_are_named():
    case = type_column("CASE", [1, 2, 3, 5, 8, 9, 10, 12, 13, 15, 16, 20])  # gaps: rows were removed
    assert case.kind == "dropped" and "increasing down the file" in case.how
    shuffled = type_column("record_no", [5, 3, 9, 1, 12, 7, 2, 30, 4, 8])
    assert shuffled.kind == "dropped" and "named like an id" in shuffled.how
    grade = type_column("grade", [1, 2, 3, 2, 1, 9, 3, 2, 1, 9, 2, 3])
    assert grade.kind == "ordinal" and "the value 9 stands apart" in grade.note
    assert type_column("nodes", [0, 3, 1, 12, 2, 0, 5, 1, 0, 7]).kind == "numeric"  # a real count stays
