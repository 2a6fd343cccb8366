"""Cohort CSVs: the real larynx cohort, column maps, and every kind of bad cohort named by row and column."""

import json

import numpy as np
import pytest

from DuPLUSLib.prognosis.cohort import CohortError, ColumnMap, larynx_frame, load_cohort


@pytest.fixture
def larynx_csv(tmp_path):
    path = tmp_path / "larynx.csv"
    larynx_frame().to_csv(path, index=False)
    return path


def _write(tmp_path, text, name="cohort.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_larynx_cohort_loads_with_its_real_figures(larynx_csv):
    cohort = load_cohort(larynx_csv, "time_years", "death")
    assert len(cohort) == 90 and cohort.event.sum() == 50
    assert {r.stage for r in cohort.records} == {"I", "II", "III", "IV"}
    assert all(r.site == "larynx" for r in cohort.records)


def test_column_map_renames_columns_and_sets_constants(tmp_path):
    csv = _write(tmp_path, "MRN,AgeDx,AJCC,months,dead\nA1,61,III,30,1\nA2,70,II,12,0\n")
    mapping = _write(tmp_path, json.dumps({"columns": {"patient_id": "MRN", "age": "AgeDx", "stage": "AJCC"},
                                           "constants": {"site": "oropharynx"}}), "map.json")
    cohort = load_cohort(csv, "months", "dead", ColumnMap.load(mapping))
    assert cohort.ids == ["A1", "A2"] and cohort.records[0].stage == "III" and cohort.records[1].site == "oropharynx"


@pytest.mark.parametrize("choice", [{"exclude": ["AgeDx"]}, {"columns": ["AJCC"]}])
def test_a_mapped_column_that_the_command_leaves_out_is_refused_not_kept(tmp_path, choice):
    """The map said use it, --exclude/--columns said leave it out: it was kept without a word."""
    csv = _write(tmp_path, "MRN,AgeDx,AJCC,months,dead\nA1,61,III,30,1\nA2,70,II,12,0\n")
    mapping = _write(tmp_path, json.dumps({"columns": {"patient_id": "MRN", "age": "AgeDx", "stage": "AJCC"}}),
                     "map.json")
    with pytest.raises(CohortError, match="AgeDx are named in the column map and left out by --exclude or --columns"):
        load_cohort(csv, "months", "dead", ColumnMap.load(mapping), **choice)


def test_missing_column_names_the_column_and_lists_the_others(tmp_path):
    csv = _write(tmp_path, "age,stage,time,death\n60,II,3,1\n")
    with pytest.raises(CohortError, match="column 'months' .*its columns are: age, stage, time, death"):
        load_cohort(csv, "months", "death")


def test_impossible_age_names_row_and_column(tmp_path):
    csv = _write(tmp_path, "age,stage,time,death\n60,II,3,1\n212,II,4,0\n")
    with pytest.raises(CohortError, match=r"row 2, column 'age': .*212"):
        load_cohort(csv, "time", "death")


def test_unknown_stage_code_names_row_and_column(tmp_path):
    csv = _write(tmp_path, "age,stage,time,death\n60,II,3,1\n61,IIX,4,0\n")
    with pytest.raises(CohortError, match=r"row 2, column 'stage': unknown overall stage 'IIX'"):
        load_cohort(csv, "time", "death")


def test_duplicate_patient_ids_are_refused(tmp_path):
    csv = _write(tmp_path, "patient_id,age,time,death\nP1,60,3,1\nP2,61,4,0\nP1,62,5,1\n")
    with pytest.raises(CohortError, match=r"row 3, column 'patient_id': patient id 'P1' also appears in row 1"):
        load_cohort(csv, "time", "death")


def test_a_cohort_without_events_is_refused(tmp_path):
    csv = _write(tmp_path, "age,time,death\n60,3,0\n61,4,0\n")
    with pytest.raises(CohortError, match="no patient has an event"):
        load_cohort(csv, "time", "death")


def test_a_cohort_with_constant_times_is_refused(tmp_path):
    csv = _write(tmp_path, "age,time,death\n60,5,1\n61,5,0\n")
    with pytest.raises(CohortError, match="every follow-up time is 5"):
        load_cohort(csv, "time", "death")


@pytest.mark.parametrize("cell, message", [("-2", "must be a finite number"), ("soon", "is not a number")])
def test_bad_follow_up_time_names_row_and_column(tmp_path, cell, message):
    csv = _write(tmp_path, f"age,time,death\n60,3,1\n61,{cell},0\n")
    with pytest.raises(CohortError, match=f"row 2, column 'time': .*{message}"):
        load_cohort(csv, "time", "death")


def test_missing_image_file_names_row_and_column(tmp_path):
    csv = _write(tmp_path, "age,time,death,ct,seg\n60,3,1,a.nrrd,a.seg.nrrd\n61,4,0,b.nrrd,b.seg.nrrd\n")
    with pytest.raises(CohortError, match=r"row 1, column 'ct': file .*a.nrrd' does not exist"):
        load_cohort(csv, "time", "death", image_column="ct", segmentation_column="seg")


def test_times_and_events_keep_their_values(larynx_csv):
    cohort = load_cohort(larynx_csv, "time_years", "death")
    frame = larynx_frame()
    np.testing.assert_allclose(cohort.time, frame["time_years"])
    np.testing.assert_array_equal(cohort.event, frame["death"].astype(bool))
