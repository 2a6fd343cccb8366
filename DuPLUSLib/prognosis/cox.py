"""The Cox model's two formulas, in torch and numpy: the partial likelihood and Breslow's baseline.

Both use Breslow's handling of tied times: every patient still at risk at a death time is in its
risk set and tied deaths share one denominator. lifelines' ``CoxPHFitter`` maximises Efron's
likelihood instead, which differs only when deaths tie (coefficients on the larynx cohort agree to
about 0.01), and estimates its baseline hazard with the same Breslow formula used here.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cox_negative_log_likelihood", "breslow_cumulative_hazard", "RiskSetIndex"]


class RiskSetIndex:
    """Precomputed ordering for the partial likelihood of one fixed set of (time, event) pairs.

    Sorting by decreasing time makes the risk-set sum a cumulative log-sum-exp; with ties, every
    member of a tie group must see the sum up to the *last* member of its group, which ``group_end``
    points to. Built once per training set, reused every epoch.
    """

    def __init__(self, time: np.ndarray, event: np.ndarray):
        time = np.asarray(time, dtype=float)
        self.order = np.argsort(-time, kind="stable")
        sorted_time = time[self.order]
        # index of the last position holding each sorted time (times are sorted descending)
        last = np.searchsorted(-sorted_time, -sorted_time, side="right") - 1
        self.group_end = torch.as_tensor(last, dtype=torch.long)
        self.order_t = torch.as_tensor(self.order, dtype=torch.long)
        self.event_sorted = torch.as_tensor(np.asarray(event, dtype=bool)[self.order])
        self.n_events = int(self.event_sorted.sum())


def cox_negative_log_likelihood(risk: torch.Tensor, index: RiskSetIndex) -> torch.Tensor:
    """Mean negative Breslow partial log-likelihood per event of log-hazards ``risk [N]``."""
    if index.n_events == 0:
        return risk.sum() * 0.0
    ordered = risk[index.order_t]
    log_risk_set = torch.logcumsumexp(ordered, dim=0)[index.group_end]
    contributions = (ordered - log_risk_set)[index.event_sorted]
    return -contributions.sum() / index.n_events


def breslow_cumulative_hazard(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's baseline cumulative hazard ``H0`` at each distinct event time.

    ``H0(t) = sum over event times t_j <= t of d_j / sum_{i: T_i >= t_j} exp(risk_i)``; a patient's
    survival is then ``S(t | x) = exp(-H0(t) * exp(risk(x)))``.
    """
    risk = np.asarray(risk, dtype=float)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    shift = risk.max()  # exp of large risks would overflow; the shift cancels in S(t | x)
    weights = np.exp(risk - shift)
    event_times = np.unique(time[event])
    hazard = np.empty(len(event_times))
    for j, t in enumerate(event_times):
        deaths = np.count_nonzero(event & (time == t))
        hazard[j] = deaths / weights[time >= t].sum()
    return event_times, np.cumsum(hazard) * np.exp(-shift)


def survival_at(times: np.ndarray, event_times: np.ndarray, cumulative_hazard: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """``S(t | x)`` for each risk (rows) at each time (columns); a step function of ``H0``."""
    positions = np.searchsorted(event_times, np.asarray(times, dtype=float), side="right") - 1
    h0 = np.where(positions >= 0, cumulative_hazard[np.clip(positions, 0, None)], 0.0)
    return np.exp(-np.outer(np.exp(np.asarray(risk, dtype=float)), h0))
