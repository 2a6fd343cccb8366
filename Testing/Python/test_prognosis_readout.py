"""The readout: risk groups and percentiles from the training cohort, KM curves, the plot, the text."""

import numpy as np
import pytest

from DuPLUSLib.prognosis.readout import KaplanMeierCurve, PatientReadout, RiskReference, plot_readout


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    risk = rng.normal(size=90)
    time = rng.exponential(5 / np.exp(risk))
    event = rng.random(90) < 0.7
    return RiskReference.build(risk, time, event, groups=3), risk


def test_tertiles_make_three_equal_groups_ordered_by_risk(reference):
    ref, risk = reference
    assert [c.patients for c in ref.curves] == [30, 30, 30]
    assert ref.group_of(risk.min()) == "low" and ref.group_of(risk.max()) == "high"
    assert ref.group_of(float(np.median(risk))) == "intermediate"


def test_a_median_split_makes_two_groups():
    ref = RiskReference.build(np.arange(10.0), np.arange(1.0, 11.0), np.ones(10, bool), groups=2)
    assert ref.labels == ["low", "high"] and [c.patients for c in ref.curves] == [5, 5]


def test_percentile_is_the_share_of_training_patients_at_or_below(reference):
    ref, risk = reference
    assert ref.percentile(risk.max()) == 100.0
    assert ref.percentile(risk.min() - 1) == 0.0
    assert ref.percentile(float(np.sort(risk)[44])) == pytest.approx(50.0)


def test_km_curve_matches_lifelines_with_band_and_numbers_at_risk():
    from lifelines import KaplanMeierFitter

    time = np.array([1, 2, 2, 3, 4, 5, 6, 7.5])
    event = np.array([1, 1, 0, 1, 0, 1, 0, 1], bool)
    curve = KaplanMeierCurve.fit("all", time, event, [0, 2, 4, 6])
    expected = KaplanMeierFitter().fit(time, event).survival_function_.iloc[:, 0].to_numpy()
    np.testing.assert_allclose(curve.survival, expected)
    assert all(lo <= s <= hi for lo, s, hi in zip(curve.lower, curve.survival, curve.upper))
    assert curve.at_risk == [8, 7, 4, 2]


def _readout():
    times = list(np.linspace(0, 10, 50))
    curve = list(np.exp(-0.1 * np.array(times)))
    survival = {"2 years": {"time": 2.0, "estimate": 0.82, "lower": 0.7, "upper": 0.9, "beyond_follow_up": False},
                "5 years": {"time": 5.0, "estimate": 0.61, "lower": 0.45, "upper": 0.74, "beyond_follow_up": False}}
    return PatientReadout("A 63-year-old man with laryngeal cancer, stage II.", 0.3, float(np.exp(0.3)), 64.0,
                          "intermediate", survival, times, curve, [c * 0.9 for c in curve], [min(1, c * 1.1) for c in curve])


def test_plot_is_a_png_with_curves_bands_and_numbers_at_risk(reference, tmp_path):
    ref, _ = reference
    path = plot_readout(_readout(), ref, tmp_path / "km.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_summary_text_states_group_percentile_and_both_horizons():
    text = _readout().summary_text()
    assert "64th percentile: intermediate risk group" in text
    assert "at 2 years: 82% (95% interval 70-90%)" in text and "at 5 years: 61%" in text


def test_risk_groups_with_tied_risks_are_named_by_how_many_there_really_are():
    """One binary covariate gives two distinct risks: two groups, low and high, neither empty."""
    risk = np.array([-0.2] * 47 + [0.3] * 33)
    time = np.linspace(1, 80, 80)
    event = np.arange(80) % 3 != 0
    reference = RiskReference.build(risk, time, event, groups=3)
    assert reference.labels == ["low", "high"] and [c.patients for c in reference.curves] == [47, 33]
    assert reference.group_of(-0.2) == "low" and reference.group_of(0.3) == "high"
    assert RiskReference.build(np.zeros(10), np.arange(1, 11.0), np.ones(10, bool)).labels == ["all"]
