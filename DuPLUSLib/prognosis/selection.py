"""Model selection by nested cross-validation among penalised CoxPH, the DuPLUS head and their ensemble.

Why nested: choosing the best of three models by the same folds that score it flatters the winner.
Here every outer training fold runs its own inner cross-validation to choose a candidate, and only
then is the outer test fold looked at. Each outer fold measures *every* candidate (so the report can
show all of them) and records which one its inner selection chose; the "selected" row is the outer
C-index of the chosen candidate, fold by fold: the honest estimate of the whole procedure.

The model finally trained on all patients is the candidate with the best mean outer C-index, so a
chosen model always has a measured outer C-index (:attr:`NestedResult.chosen` is never a model that
was not scored on held-out patients).

Beside the candidates, lifelines' CoxPHFitter on all the same numeric columns is scored on the same
outer folds: the textbook baseline the selection must not fall below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .baseline import CoxBaseline
from .evaluation import _brier_grid, fold_c_index, fold_summary, integrated_brier_score, repeated_kfold, scored_mean
from .features import PatientInputs
from .model import LEARNT_BLOCKS, PrognosisConfig, PrognosisModel

__all__ = ["CANDIDATES", "NestedResult", "candidate_configs", "fit_candidates", "nested_cross_validate"]

CANDIDATES = ("coxph", "duplus", "ensemble")
BASELINE = "lifelines_coxph"


def candidate_configs(config: PrognosisConfig) -> dict[str, PrognosisConfig]:
    """The three candidates built from one configuration (its blocks, seed and training settings)."""
    base = {**config.to_dict(), "n_bootstrap": 0}
    numbers = tuple(b for b in config.use if b not in LEARNT_BLOCKS)
    configs = {"duplus": PrognosisConfig.from_dict({**base, "kind": "head"})}
    if numbers:
        configs["coxph"] = PrognosisConfig.from_dict({**base, "kind": "coxph", "use": numbers, "hidden": 0})
        if config.hidden == 0:
            configs["ensemble"] = PrognosisConfig.from_dict({**base, "kind": "ensemble"})
    return {name: configs[name] for name in CANDIDATES if name in configs}


def fit_candidates(configs: dict[str, PrognosisConfig], inputs: PatientInputs, time: np.ndarray,
                   event: np.ndarray) -> dict[str, PrognosisModel]:
    """Every candidate fitted on the same patients; the ensemble is built from the other two (no refit)."""
    models = {name: PrognosisModel(c).fit(inputs, time, event) for name, c in configs.items() if name != "ensemble"}
    if "ensemble" in configs:
        models["ensemble"] = PrognosisModel.ensemble_of(models["coxph"], models["duplus"], inputs, time, event)
    return models


def _best(scores: dict[str, float]) -> str:
    """The candidate with the best score (ties: the simpler one); an unscored candidate comes last."""
    return max(scores, key=lambda n: (round(scores[n], 6) if np.isfinite(scores[n]) else -np.inf,
                                      -CANDIDATES.index(n)))


@dataclass
class NestedResult:
    """Per outer fold: every candidate's C-index and IBS, the inner choice, and the lifelines baseline."""

    c_index: dict[str, list[float]] = field(default_factory=dict)  # candidate (and baseline) -> per outer fold
    ibs: dict[str, list[float]] = field(default_factory=dict)
    chosen_per_fold: list[str] = field(default_factory=list)
    inner_c_index: list[dict[str, float]] = field(default_factory=list)  # per outer fold: candidate -> inner mean
    folds: int = 5
    repeats: int = 1
    inner_folds: int = 3
    seed: int = 0

    @property
    def selected_c_index(self) -> list[float]:
        """The outer C-index of the candidate each fold's inner selection chose (measured, never imputed)."""
        return [self.c_index[name][i] for i, name in enumerate(self.chosen_per_fold)]

    @property
    def selected_ibs(self) -> list[float]:
        return [self.ibs[name][i] for i, name in enumerate(self.chosen_per_fold)]

    @property
    def candidates(self) -> list[str]:
        return [n for n in self.c_index if n != BASELINE]

    @property
    def chosen(self) -> str:
        """The candidate trained on all patients: the best mean outer C-index (ties: the simpler one)."""
        return _best({n: scored_mean(self.c_index[n]) for n in self.candidates})

    @property
    def unscored_test_folds(self) -> int:
        """Outer test folds without a comparable pair: left out of every mean (the same folds for all)."""
        return int(np.sum(~np.isfinite(np.asarray(self.selected_c_index, float))))

    def summary(self) -> dict[str, dict[str, float]]:
        rows = {name: self.c_index[name] for name in self.c_index}
        rows["selected (nested)"] = self.selected_c_index
        ibs = {**self.ibs, "selected (nested)": self.selected_ibs}
        return {name: fold_summary(values, ibs.get(name, [np.nan]), self.repeats, self.folds)
                for name, values in rows.items()}

    def to_dict(self) -> dict:
        counts = {n: self.chosen_per_fold.count(n) for n in self.candidates}
        return {"protocol": f"{self.repeats} x {self.folds}-fold outer CV; selection by {self.inner_folds}-fold "
                            f"inner CV on each outer training fold; seed {self.seed}",
                "folds": self.folds, "repeats": self.repeats, "inner_folds": self.inner_folds, "seed": self.seed,
                "chosen": self.chosen, "chosen_per_fold_counts": counts, "summary": self.summary(),
                "unscored_test_folds": self.unscored_test_folds,
                "c_index": self.c_index, "ibs": self.ibs, "chosen_per_fold": self.chosen_per_fold,
                "inner_c_index": self.inner_c_index}


def nested_cross_validate(inputs: PatientInputs, time: np.ndarray, event: np.ndarray, config: PrognosisConfig,
                          folds: int = 5, repeats: int = 1, inner_folds: int = 3, seed: int = 0,
                          baseline: bool = True, progress: Callable[[int, int], None] | None = None) -> NestedResult:
    """Nested CV of the candidates of ``config`` (see the module docstring); identical splits for all."""
    time, event = np.asarray(time, float), np.asarray(event, bool)
    configs = candidate_configs(config)
    names = list(configs) + ([BASELINE] if baseline else [])
    result = NestedResult({n: [] for n in names}, {n: [] for n in names}, folds=folds, repeats=repeats,
                          inner_folds=inner_folds, seed=seed)
    splits = repeated_kfold(len(time), folds, repeats, seed)
    for number, (train, test) in enumerate(splits):
        inner = _inner_scores(configs, inputs.subset(train), time[train], event[train], inner_folds,
                              seed=10_000 + seed * 100 + number)
        result.inner_c_index.append(inner)
        result.chosen_per_fold.append(_best(inner))
        models: dict = fit_candidates(configs, inputs.subset(train), time[train], event[train])
        if baseline:
            models[BASELINE] = CoxBaseline(use_image=inputs.image is not None).fit(inputs.subset(train), time[train],
                                                                                   event[train])
        grid = _brier_grid(time[train], event[train], time[test])
        for name, model in models.items():
            test_inputs = inputs.subset(test)
            result.c_index[name].append(fold_c_index(time[test], event[test], model.predict_risk(test_inputs)))
            if grid is None:
                result.ibs[name].append(float("nan"))
            else:
                survival = model.predict_survival_function(test_inputs, grid)
                result.ibs[name].append(integrated_brier_score(time[train], event[train], time[test], event[test],
                                                               survival, grid))
        if progress:
            progress(number + 1, len(splits))
    return result


def _inner_scores(configs: dict[str, PrognosisConfig], inputs: PatientInputs, time: np.ndarray, event: np.ndarray,
                  folds: int, seed: int) -> dict[str, float]:
    """Mean C-index of each candidate over an inner k-fold CV of one outer training fold."""
    scores: dict[str, list[float]] = {name: [] for name in configs}
    for train, test in repeated_kfold(len(time), folds, 1, seed):
        if not event[train].any():
            continue
        models = fit_candidates(configs, inputs.subset(train), time[train], event[train])
        for name, model in models.items():
            scores[name].append(fold_c_index(time[test], event[test], model.predict_risk(inputs.subset(test))))
    return {name: scored_mean(values) for name, values in scores.items()}
