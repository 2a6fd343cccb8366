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
