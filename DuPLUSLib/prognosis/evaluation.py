"""Repeated k-fold cross-validation with C-index and integrated Brier score, same splits for all.

Every model is scored on identical folds, so differences between models are not differences in
luck of the split; the splits come from a seed and are reproducible. With 90 patients one 5-fold
split moves the C-index by several hundredths, hence repeats (20 x 5 in PROGNOSIS_CARD.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .covariates import harrell_c
from .features import PatientInputs

__all__ = ["repeated_kfold", "integrated_brier_score", "cross_validate", "CVResult", "fold_c_index",
           "scored_mean", "fold_summary"]

Factory = Callable[[], object]  # returns an unfitted model with fit / predict_risk / predict_survival_function


def repeated_kfold(n: int, folds: int = 5, repeats: int = 20, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats x folds`` (train, test) index pairs; repeat r shuffles with seed ``seed + r``."""
    if folds < 2 or n < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} patients and 2 folds")
    splits = []
    for repeat in range(repeats):
        order = np.random.default_rng(seed + repeat).permutation(n)
        for test in np.array_split(order, folds):
            splits.append((np.setdiff1d(order, test), np.sort(test)))
    return splits


def _censoring_survival(time: np.ndarray, event: np.ndarray):
    """Kaplan-Meier of the censoring distribution G(t), as a step function."""
    from lifelines import KaplanMeierFitter

    fitter = KaplanMeierFitter().fit(time, ~np.asarray(event, bool))
    grid = fitter.survival_function_.index.to_numpy()
    values = fitter.survival_function_.iloc[:, 0].to_numpy()

    def at(t: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(grid, t, side="right") - 1
        return np.where(positions >= 0, values[np.clip(positions, 0, None)], 1.0)

    return at


def integrated_brier_score(train_time: np.ndarray, train_event: np.ndarray, test_time: np.ndarray,
                           test_event: np.ndarray, survival: np.ndarray, times: np.ndarray) -> float:
    """Graf's inverse-probability-of-censoring-weighted Brier score, integrated over ``times``.

    ``survival[i, j]`` is the predicted ``S(times[j] | test patient i)``. The censoring distribution
    is estimated on the training patients. Lower is better; 0.25 is a coin toss at S = 0.5.
    """
    times = np.asarray(times, float)
    test_time, test_event = np.asarray(test_time, float), np.asarray(test_event, bool)
    censoring = _censoring_survival(train_time, train_event)
    g_at_death = np.clip(censoring(test_time - 1e-9), 1e-3, None)  # G(T_i-)
    scores = []
    for j, t in enumerate(times):
        died = (test_time <= t) & test_event
        alive = test_time > t
        g_t = max(float(censoring(np.array([t]))[0]), 1e-3)
        s = survival[:, j]
        score = np.where(died, s ** 2 / g_at_death, 0.0) + np.where(alive, (1 - s) ** 2 / g_t, 0.0)
        scores.append(score.mean())
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


def fold_c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of one test fold; NaN where the fold holds no comparable pair (no event before
    another patient's time), as a small fold of a cohort with few events can. Summaries leave such
    folds out and count them."""
    c = harrell_c(time, event, risk)
    return float("nan") if c is None else c


def scored_mean(values) -> float:
    """The mean over the folds that could be scored (NaN if none could)."""
    values = np.asarray(values, float)
    scored = values[np.isfinite(values)]
    return float(scored.mean()) if scored.size else float("nan")


def _scored_sd(values: np.ndarray) -> float:
    return float(np.nanstd(values)) if np.isfinite(values).any() else float("nan")


def fold_summary(c_index, ibs, repeats: int, folds: int) -> dict[str, float]:
    """Mean and SD of the C-index over the scored folds, the SD of the per-repeat means (the
    split-to-split spread), and the mean IBS; unscored folds (NaN) are left out of each."""
    values = np.asarray(c_index, float)
    per_repeat = np.array([scored_mean(row) for row in values.reshape(repeats, folds)])
    return {"c_index_mean": scored_mean(values), "c_index_sd_folds": _scored_sd(values),
            "c_index_sd_repeats": _scored_sd(per_repeat), "ibs_mean": scored_mean(ibs)}


@dataclass
class CVResult:
    """Per-fold scores of each model: ``c_index[name][fold]``, ``ibs[name][fold]``."""

    c_index: dict[str, list[float]] = field(default_factory=dict)
    ibs: dict[str, list[float]] = field(default_factory=dict)
    folds: int = 5
    repeats: int = 20
    seed: int = 0

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and SD over all folds, and the SD of the per-repeat means (the split-to-split spread)."""
        return {name: fold_summary(values, self.ibs.get(name, [np.nan]), self.repeats, self.folds)
                for name, values in self.c_index.items()}

    def to_dict(self) -> dict:
        return {"folds": self.folds, "repeats": self.repeats, "seed": self.seed, "summary": self.summary(),
                "c_index": self.c_index, "ibs": self.ibs}


def cross_validate(inputs: PatientInputs, time: np.ndarray, event: np.ndarray, models: Mapping[str, Factory],
                   folds: int = 5, repeats: int = 20, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> CVResult:
    """Fit every model on every training fold and score it on the matching test fold."""
    time, event = np.asarray(time, float), np.asarray(event, bool)
    result = CVResult({name: [] for name in models}, {name: [] for name in models}, folds, repeats, seed)
    splits = repeated_kfold(len(time), folds, repeats, seed)
    for number, (train, test) in enumerate(splits):
        grid = _brier_grid(time[train], event[train], time[test])
        for name, factory in models.items():
            model = factory().fit(inputs.subset(train), time[train], event[train])
            risk = model.predict_risk(inputs.subset(test))
            result.c_index[name].append(fold_c_index(time[test], event[test], risk))
            if grid is None:
                result.ibs[name].append(float("nan"))
            else:
                survival = model.predict_survival_function(inputs.subset(test), grid)
                result.ibs[name].append(integrated_brier_score(time[train], event[train], time[test],
                                                               event[test], survival, grid))
        if progress:
            progress(number + 1, len(splits))
    return result


def _brier_grid(train_time: np.ndarray, train_event: np.ndarray, test_time: np.ndarray) -> np.ndarray | None:
    """Times from the 10th to the 80th percentile of training follow-up, inside the test range."""
    low, high = np.quantile(train_time, [0.1, 0.8])
    high = min(high, float(test_time.max()))
    if high <= low:
        return None
    return np.linspace(low, high, 25)
