"""Nested model selection, the penalised Cox candidate, the ensemble, and the readout's units and contributions."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from DuPLUSLib.cli import main
from DuPLUSLib.prognosis.cohort import cohort_from_frame, larynx_frame
from DuPLUSLib.prognosis.cox import fit_penalised_cox
from DuPLUSLib.prognosis.features import encode_patients
from DuPLUSLib.prognosis.model import PrognosisConfig, PrognosisModel
from DuPLUSLib.prognosis.pipeline import train_bundle
from DuPLUSLib.prognosis.selection import BASELINE, CANDIDATES, candidate_configs, nested_cross_validate

FAST = dict(n_bootstrap=0, inner_splits=1, max_epochs=30, min_epochs=10)


def _inputs(cohort):
    return encode_patients(cohort.records, covariates=cohort.covariates, columns=cohort.extra_columns)


@pytest.fixture(scope="module")
def larynx():
    torch.set_num_threads(1)
    cohort = cohort_from_frame(larynx_frame(), "time_years", "death")
    return cohort, _inputs(cohort)


def test_penalised_cox_matches_lifelines_coefficients():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    x = (x - x.mean(0)) / x.std(0, ddof=1)  # lifelines penalises the coefficients of columns it standardises so
    time = rng.exponential(np.exp(-(x @ [0.8, -0.5, 0.0])))  # continuous times: no ties, Breslow = Efron
    event = rng.random(200) < 0.7
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(t=time, e=event.astype(int))
    for penalty in (0.0, 0.1):
        expected = CoxPHFitter(penalizer=penalty).fit(frame, "t", "e").params_.to_numpy()
        np.testing.assert_allclose(fit_penalised_cox(x, time, event, penalty), expected, atol=2e-3)


def test_nested_selection_reports_only_candidates_measured_on_held_out_folds(larynx):
    cohort, inputs = larynx
    result = nested_cross_validate(inputs, cohort.time, cohort.event, PrognosisConfig(use=("numeric",), **FAST),
                                   folds=3, repeats=1, inner_folds=2, seed=5)
    assert set(result.candidates) == set(CANDIDATES) and BASELINE in result.c_index
    assert len(result.chosen_per_fold) == 3 and set(result.chosen_per_fold) <= set(CANDIDATES)
    for fold, name in enumerate(result.chosen_per_fold):
        # the fold's inner CV chose it, and its outer C-index on that fold was measured
        assert result.inner_c_index[fold][name] == max(result.inner_c_index[fold].values())
        assert np.isfinite(result.c_index[name][fold]) and result.selected_c_index[fold] == result.c_index[name][fold]
    chosen = result.chosen
    assert chosen in result.candidates and len(result.c_index[chosen]) == 3
    assert np.mean(result.c_index[chosen]) == max(np.mean(result.c_index[n]) for n in result.candidates)
    summary = result.summary()
    assert 0.55 < summary["selected (nested)"]["c_index_mean"] < 0.8 and 0 < summary["coxph"]["ibs_mean"] < 0.3


def test_the_ensemble_averages_the_coxph_and_head_log_hazards(larynx):
    cohort, inputs = larynx
    configs = candidate_configs(PrognosisConfig(use=("numeric",), **FAST))
    cox = PrognosisModel(configs["coxph"]).fit(inputs, cohort.time, cohort.event)
    head = PrognosisModel(configs["duplus"]).fit(inputs, cohort.time, cohort.event)
    ensemble = PrognosisModel.ensemble_of(cox, head, inputs, cohort.time, cohort.event)
    average = 0.5 * (cox.predict_risk(inputs) + head.predict_risk(inputs))
    np.testing.assert_allclose(ensemble.predict_risk(inputs) - average, (ensemble.predict_risk(inputs) - average).mean(),
                               atol=1e-5)
    refitted = PrognosisModel(configs["ensemble"]).fit(inputs, cohort.time, cohort.event)
    np.testing.assert_allclose(refitted.predict_risk(inputs), ensemble.predict_risk(inputs), atol=1e-4)
    assert cox.cox_penalty in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _readout(bundle, values):
    record, covariates = bundle.parse_patient(values)
    return bundle.readout(record, covariates=covariates)


def _months_cohort():
    frame = larynx_frame()
    frame["months"] = frame.pop("time_years") * 12
    frame["grade"] = np.where(np.arange(90) % 3 == 0, "G3", np.where(np.arange(90) % 3 == 1, "G2", "G1"))
    return cohort_from_frame(frame, "months", "death")


def test_the_readout_carries_the_time_unit_and_horizons():
    cohort = _months_cohort()
    inputs = _inputs(cohort)
    config = PrognosisConfig(use=("numeric", "extra"), kind="coxph", n_bootstrap=3)
    bundle = train_bundle(inputs, cohort, config, time_unit="months", horizons=[12, 36])
    readout = _readout(bundle, {"age": 70, "stage": "IV", "grade": "G3"})
    assert list(readout.survival) == ["12 months (1.0 years)", "36 months (3.0 years)"]
    assert readout.survival["12 months (1.0 years)"]["time"] == 12 and readout.time_unit == "months"
    one, three = readout.survival.values()
    assert 0 <= one["lower"] <= one["estimate"] <= one["upper"] <= 1 and three["estimate"] < one["estimate"]
    assert "Predicted survival at 36 months (3.0 years)" in readout.summary_text()
    default = train_bundle(inputs, cohort, PrognosisConfig(use=("numeric",), kind="coxph", n_bootstrap=0),
                           time_unit="months")
    assert [s["time"] for s in _readout(default, {"age": 60}).survival.values()] == [24, 60]


def test_contributions_add_up_to_the_risk_and_name_the_drivers():
    cohort = _months_cohort()
    inputs = _inputs(cohort)
    bundle = train_bundle(inputs, cohort, PrognosisConfig(use=("numeric", "extra"), kind="coxph", n_bootstrap=0),
                          time_unit="months")
    readout = _readout(bundle, {"age": 80, "stage": "IV", "grade": "G1"})
    names = {c["name"]: c for c in readout.contributions}
    assert set(names) == {"age", "stage", "grade"} and names["stage"]["value"] == "IV"
    total = sum(c["contribution"] for c in readout.contributions)
    assert total == pytest.approx(readout.risk_score + bundle.model.main.risk_offset, abs=1e-4)
    assert names["stage"]["contribution"] > 0  # stage IV is worse than the average larynx patient
    assert abs(readout.contributions[0]["contribution"]) >= abs(readout.contributions[-1]["contribution"])
    assert "What drove this risk" in readout.summary_text() and "stage (IV)" in readout.summary_text()


def test_train_prints_the_column_table_and_the_selection_and_predict_reads_extra_columns(tmp_path, capsys):
    frame = larynx_frame()
    frame["grade"] = np.where(np.arange(90) % 2 == 0, "poorly differentiated", "well differentiated")
    frame["centre"] = "A"
    frame.to_csv(tmp_path / "cohort.csv", index=False)
    model = tmp_path / "model"
    code = main(["prognosis", "train", "--cohort", str(tmp_path / "cohort.csv"), "--time", "time_years",
                 "--event", "death", "--features", "numeric,extra", "--cv-repeats", "1", "--cv-folds", "3",
                 "--inner-folds", "2", "--bootstrap", "0", "-o", str(model)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "grade" in out and "ordinal (differentiation)" in out and "dropped: constant" in out
    assert "penalised CoxPH" in out and "lifelines CoxPH" in out and "selected (nested)" in out
    saved = json.loads((model / "prognosis.json").read_text())
    assert saved["selection"]["chosen"] == saved["model"]["kind"].replace("head", "duplus")
    assert [c["name"] for c in saved["covariates"] if c["kind"] == "ordinal"] == ["grade"]
    (tmp_path / "p.json").write_text(json.dumps({"age": 60, "stage": "II", "grade": "moderately differentiated"}))
    assert main(["prognosis", "predict", "--model", str(model), "--ehr", str(tmp_path / "p.json")]) == 2
    assert "'moderately differentiated' is not on this column's scale" in capsys.readouterr().err
    (tmp_path / "p.json").write_text(json.dumps({"age": 60, "stage": "II", "grade": "poorly differentiated"}))
    assert main(["prognosis", "predict", "--model", str(model), "--ehr", str(tmp_path / "p.json")]) == 0
    assert "grade (poorly differentiated)" in capsys.readouterr().out


def test_train_refuses_a_date_column_and_writes_nothing(tmp_path, capsys):
    frame = larynx_frame()
    frame["diagnosis_date"] = [f"1975-0{1 + i % 9}-1{i % 10}" for i in range(90)]
    frame.to_csv(tmp_path / "cohort.csv", index=False)
    code = main(["prognosis", "train", "--cohort", str(tmp_path / "cohort.csv"), "--time", "time_years",
                 "--event", "death", "-o", str(tmp_path / "model")])
    assert code == 2 and "row 1, column 'diagnosis_date': '1975-01-10' is a date" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_auto_selection_without_outer_cv_is_refused(tmp_path, capsys):
    larynx_frame().to_csv(tmp_path / "cohort.csv", index=False)
    code = main(["prognosis", "train", "--cohort", str(tmp_path / "cohort.csv"), "--time", "time_years",
                 "--event", "death", "--cv-repeats", "0", "-o", str(tmp_path / "model")])
    assert code == 2 and "give --cv-repeats 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
