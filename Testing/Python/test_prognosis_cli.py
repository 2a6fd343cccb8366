"""``duplus prognosis``: what it writes for good input, and that bad input writes nothing."""

import json

import numpy as np
import pytest

from DuPLUSLib.cli import main
from DuPLUSLib.imageio import SegmentMask, VolumeImage, write_image, write_segmentation
from DuPLUSLib.ontology import load_ontology
from DuPLUSLib.prognosis.cohort import larynx_frame


@pytest.fixture
def larynx_csv(tmp_path):
    path = tmp_path / "larynx.csv"
    larynx_frame().to_csv(path, index=False)
    return path


def _ehr(tmp_path, values):
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def test_predict_with_the_bundled_model_writes_report_and_plot(tmp_path, capsys):
    ehr = _ehr(tmp_path, {"age": 66, "stage": "III", "site": "larynx"})
    code = main(["prognosis", "predict", "--ehr", str(ehr), "--report", str(tmp_path / "out.json"),
                 "--plot", str(tmp_path / "km.png")])
    assert code == 0
    report = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["readout"]
    assert report["risk_group"] in ("low", "intermediate", "high") and 0 <= report["percentile"] <= 100
    for horizon in ("2 years", "5 years"):
        s = report["survival"][horizon]
        assert 0 <= s["lower"] <= s["estimate"] <= s["upper"] <= 1
    assert (tmp_path / "km.png").read_bytes()[:4] == b"\x89PNG"
    assert "Predicted survival at 5 years" in capsys.readouterr().out


def test_predict_refuses_an_impossible_age_and_writes_nothing(tmp_path, capsys):
    ehr = _ehr(tmp_path, {"age": 212, "stage": "II"})
    code = main(["prognosis", "predict", "--ehr", str(ehr), "--report", str(tmp_path / "out.json"),
                 "--plot", str(tmp_path / "km.png")])
    assert code == 2 and "field 'age'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patient.json"]


def test_predict_refuses_a_segmentation_without_tumour_and_writes_nothing(tmp_path, capsys):
    array = np.zeros((10, 12, 12), np.int16)
    array[3:6, 3:6, 3:6] = 50
    image = VolumeImage(array, (2.0, 2.0, 2.0))
    write_image(image, tmp_path / "ct.nrrd")
    parotid = SegmentMask(load_ontology().structures["parotid_left"], array > 0)
    write_segmentation([parotid], image, tmp_path / "organs.seg.nrrd")
    ehr = _ehr(tmp_path, {"age": 60})
    code = main(["prognosis", "predict", "--ehr", str(ehr), "--image", str(tmp_path / "ct.nrrd"),
                 "--segmentation", str(tmp_path / "organs.seg.nrrd"), "--report", str(tmp_path / "out.json")])
    assert code == 2 and "no non-empty tumour segment" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_train_then_predict_with_the_trained_model(larynx_csv, tmp_path, capsys):
    model = tmp_path / "model"
    code = main(["prognosis", "train", "--cohort", str(larynx_csv), "--time", "time_years", "--event", "death",
                 "--features", "numeric", "--model-kind", "duplus", "--bootstrap", "2", "--cv-repeats", "0",
                 "-o", str(model)])
    assert code == 0 and (model / "prognosis.json").is_file()
    ehr = _ehr(tmp_path, {"age": 50, "stage": "I"})
    assert main(["prognosis", "predict", "--model", str(model), "--ehr", str(ehr), "--progress", "json"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["readout"]["risk_group"] == "low"


def test_train_refuses_duplicate_ids_and_writes_no_model(tmp_path, capsys):
    frame = larynx_frame()
    frame.loc[5, "patient_id"] = frame.loc[2, "patient_id"]
    frame.to_csv(tmp_path / "dup.csv", index=False)
    code = main(["prognosis", "train", "--cohort", str(tmp_path / "dup.csv"), "--time", "time_years",
                 "--event", "death", "--features", "numeric", "-o", str(tmp_path / "model")])
    assert code == 2 and "row 6, column 'patient_id'" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_train_names_a_missing_column(larynx_csv, tmp_path, capsys):
    code = main(["prognosis", "train", "--cohort", str(larynx_csv), "--time", "months", "--event", "death",
                 "-o", str(tmp_path / "model")])
    assert code == 2 and "column 'months' (for time) is not in the cohort" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def _few_events_csv(tmp_path, events: int):
    """The larynx cohort with every death after the first ``events`` turned into censoring."""
    frame = larynx_frame()
    died = frame.index[frame["death"] == 1]
    frame.loc[died[events:], "death"] = 0
    path = tmp_path / "few.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("extra, message", [
    (["--features", "numeric,imgae"], "--features 'numeric,imgae' names imgae; choose from numeric, extra"),
    (["--features", ","], "names no block"),
    (["--features", "numeric", "--cv-folds", "1"], "--cv-folds 1: cross-validation needs at least 2 folds"),
    (["--features", "numeric", "--inner-folds", "1"], "--inner-folds 1: cross-validation needs at least 2 folds"),
    (["--features", "numeric", "--few-events"], "the cohort has 3 event(s), fewer than the 5 outer folds"),
])
def test_evaluate_refuses_folds_and_blocks_it_cannot_use_before_fitting(tmp_path, capsys, extra, message):
    """These once ended in a ValueError or ZeroDivisionError traceback after the cohort was encoded."""
    few = "--few-events" in extra
    cohort = _few_events_csv(tmp_path, 3) if few else _few_events_csv(tmp_path, 10_000)
    argv = ["prognosis", "evaluate", "--cohort", str(cohort), "--time", "time_years", "--event", "death",
            "--cv-repeats", "1", *[e for e in extra if e != "--few-events"]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_test_fold_without_a_comparable_pair_is_left_out_of_the_means_and_counted():
    """A fold whose patients hold no event has no C-index: NaN, not a crash, and the means skip it."""
    from DuPLUSLib.prognosis.evaluation import fold_c_index
    from DuPLUSLib.prognosis.selection import NestedResult

    assert np.isnan(fold_c_index(np.array([1.0, 2.0, 3.0]), np.zeros(3, bool), np.array([0.3, 0.2, 0.1])))
    assert fold_c_index(np.array([1.0, 2.0, 3.0]), np.ones(3, bool), np.array([0.3, 0.2, 0.1])) == 1.0
    result = NestedResult({"coxph": [0.7, np.nan, 0.5, 0.6], "duplus": [0.6, np.nan, 0.6, 0.8]},
                          {"coxph": [0.2] * 4, "duplus": [0.2] * 4}, chosen_per_fold=["coxph", "duplus", "duplus", "coxph"],
                          folds=2, repeats=2)
    summary = result.summary()
    assert summary["coxph"]["c_index_mean"] == pytest.approx(0.6)
    assert summary["duplus"]["c_index_mean"] == pytest.approx(2.0 / 3)
    assert result.chosen == "duplus" and result.unscored_test_folds == 1
    assert result.to_dict()["unscored_test_folds"] == 1


def test_train_overwrite_refuses_a_folder_holding_more_than_a_model_before_training(larynx_csv, tmp_path, capsys):
    """--overwrite replaces a model's own files; anything else in the folder stops the run up front."""
    model = tmp_path / "model"
    (model / "plots").mkdir(parents=True)
    (model / "prognosis.json").write_text("{}", encoding="utf-8")
    code = main(["prognosis", "train", "--cohort", str(larynx_csv), "--time", "time_years", "--event", "death",
                 "--features", "numeric", "--model-kind", "coxph", "--cv-repeats", "0", "--overwrite", "-o", str(model)])
    assert code == 2 and "holds plots, which is not part of a prognosis model" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == ["plots", "prognosis.json"]


@pytest.mark.parametrize("content, message", [
    ('{"age": 63, "stage": "III"}'.encode("utf-16"), None),  # PowerShell 5's '>' writes UTF-16 with a BOM
    ('\ufeff{"age": 63}'.encode("utf-8"), None),
    (b"\xff\x00\xfe\x01age", "is not UTF-8 or UTF-16 text"),
    ("folder", "cannot be read"),
])
def test_an_ehr_file_in_another_encoding_is_read_or_refused_by_name(tmp_path, capsys, content, message):
    from DuPLUSLib.prognosis.ehr import EHRValidationError, read_patient_values

    path = tmp_path / "patient.json"
    if content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    if message is None:
        assert read_patient_values(path)["age"] == 63
    else:
        with pytest.raises(EHRValidationError, match=message):
            read_patient_values(path)
