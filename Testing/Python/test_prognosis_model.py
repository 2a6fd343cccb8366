"""The survival head against lifelines on the real larynx cohort: same likelihood, same baseline, sane curves."""

import numpy as np
import pandas as pd
import pytest
import torch

from DuPLUSLib.prognosis.baseline import CoxBaseline
from DuPLUSLib.prognosis.cohort import cohort_from_frame, larynx_frame
from DuPLUSLib.prognosis.ehr import EHRRecord
from DuPLUSLib.prognosis.cox import RiskSetIndex, breslow_cumulative_hazard, cox_negative_log_likelihood
from DuPLUSLib.prognosis.evaluation import integrated_brier_score, repeated_kfold
from DuPLUSLib.prognosis.features import FeatureSpace, encode_patients
from DuPLUSLib.prognosis.model import PrognosisConfig, PrognosisModel


@pytest.fixture(scope="module")
def larynx():
    torch.set_num_threads(1)
    cohort = cohort_from_frame(larynx_frame(), "time_years", "death")
    return cohort, encode_patients(cohort.records)


def _lifelines_fit(x, cohort):
    from lifelines import CoxPHFitter

    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["t"], frame["e"] = cohort.time, cohort.event.astype(int)
    return CoxPHFitter().fit(frame, "t", "e")


def test_unpenalised_head_recovers_lifelines_coefficients(larynx):
    cohort, inputs = larynx
    config = PrognosisConfig(use=("numeric",), weight_decay=0.0, early_stopping=False, max_epochs=600,
                             learning_rate=0.05, n_bootstrap=0)
    model = PrognosisModel(config).fit(inputs, cohort.time, cohort.event)
    x = model.features.transform(inputs)
    expected = _lifelines_fit(x, cohort).params_.to_numpy()
    np.testing.assert_allclose(model.main.head.linear.weight.detach().numpy()[0], expected, atol=0.01)


def test_partial_likelihood_handles_ties_the_breslow_way(larynx):
    cohort, _ = larynx
    risk = np.random.default_rng(0).normal(size=len(cohort))
    assert len(np.unique(cohort.time[cohort.event])) < cohort.event.sum()  # the cohort has tied deaths
    expected = sum(risk[i] - np.log(np.exp(risk[cohort.time >= cohort.time[i]]).sum())
                   for i in np.flatnonzero(cohort.event))
    index = RiskSetIndex(cohort.time, cohort.event)
    ours = -float(cox_negative_log_likelihood(torch.as_tensor(risk), index)) * cohort.event.sum()
    assert ours == pytest.approx(expected, abs=1e-9)


def test_breslow_baseline_matches_lifelines(larynx):
    cohort, inputs = larynx
    x = FeatureSpace.fit(inputs, ("numeric",), 4, 4).transform(inputs)
    fitter = _lifelines_fit(x, cohort)
    # lifelines centres the covariates: its baseline is for the mean patient
    risk = (x - x.mean(0)) @ fitter.params_.to_numpy()
    times, cumulative = breslow_cumulative_hazard(risk, cohort.time, cohort.event)
    theirs = fitter.baseline_cumulative_hazard_.iloc[:, 0]
    np.testing.assert_allclose(cumulative, theirs.loc[times].to_numpy(), rtol=1e-6)


def test_higher_stage_means_higher_risk_and_lower_survival(larynx):
    cohort, inputs = larynx
    model = PrognosisModel(PrognosisConfig(use=("numeric",), n_bootstrap=5)).fit(inputs, cohort.time, cohort.event)
    patients = encode_patients([EHRRecord(age=65, stage=s) for s in ("I", "IV")])
    risk = model.predict_risk(patients)
    survival = model.predict_survival_function(patients, [1, 2, 5])
    assert risk[1] > risk[0]
    assert np.all(survival[1] < survival[0]) and np.all(np.diff(survival, axis=1) <= 0)
    lower, upper = model.predict_survival_interval(patients, [2, 5])
    point = model.predict_survival_function(patients, [2, 5])
    assert np.all(lower <= point + 1e-9) and np.all(point <= upper + 1e-9) and np.all(upper - lower > 0)


def test_training_is_reproducible_with_a_seed(larynx):
    cohort, inputs = larynx
    config = PrognosisConfig(use=("numeric",), n_bootstrap=0, seed=3)
    a = PrognosisModel(config).fit(inputs, cohort.time, cohort.event).predict_risk(inputs)
    b = PrognosisModel(config).fit(inputs, cohort.time, cohort.event).predict_risk(inputs)
    np.testing.assert_array_equal(a, b)


def test_cross_validated_c_index_is_informative_on_larynx(larynx):
    from DuPLUSLib.prognosis.evaluation import cross_validate

    cohort, inputs = larynx
    result = cross_validate(inputs, cohort.time, cohort.event,
                            {"ours": lambda: PrognosisModel(PrognosisConfig(use=("numeric",), n_bootstrap=0)),
                             "coxph": lambda: CoxBaseline()}, folds=5, repeats=1, seed=0)
    summary = result.summary()
    assert 0.58 < summary["ours"]["c_index_mean"] < 0.75 and 0.58 < summary["coxph"]["c_index_mean"] < 0.75
    assert 0.1 < summary["ours"]["ibs_mean"] < 0.25


def test_repeated_kfold_covers_every_patient_once_per_repeat():
    splits = repeated_kfold(23, folds=5, repeats=3, seed=1)
    assert len(splits) == 15
    for repeat in range(3):
        tests = np.concatenate([test for _, test in splits[repeat * 5:(repeat + 1) * 5]])
        assert sorted(tests) == list(range(23))
    assert all(len(np.intersect1d(train, test)) == 0 for train, test in splits)


def test_brier_score_rewards_the_truth():
    rng = np.random.default_rng(0)
    times = rng.exponential(1.0, 400)
    events = np.ones(400, bool)
    grid = np.linspace(0.2, 1.5, 10)
    truth = np.exp(-np.outer(np.ones(400), grid))
    wrong = np.exp(-np.outer(np.ones(400), grid) * 4)
    good = integrated_brier_score(times, events, times, events, truth, grid)
    bad = integrated_brier_score(times, events, times, events, wrong, grid)
    assert good < bad and good < 0.25
