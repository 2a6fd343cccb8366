"""The Cox model's two formulas, in torch and numpy: the partial likelihood and Breslow's baseline.

Both use Breslow's handling of tied times: every patient still at risk at a death time is in its
risk set and tied deaths share one denominator. lifelines' ``CoxPHFitter`` maximises Efron's
likelihood instead, which differs only when deaths tie (coefficients on the larynx cohort agree to
about 0.01), and estimates its baseline hazard with the same Breslow formula used here.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cox_negative_log_likelihood", "breslow_cumulative_hazard", "RiskSetIndex", "fit_penalised_cox"]


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


def fit_penalised_cox(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalty: float = 0.1,
                      max_iterations: int = 50, tolerance: float = 1e-7) -> np.ndarray:
    """Ridge-penalised Cox regression by Newton-Raphson (Breslow ties): the coefficients ``[D]``.

    Minimises ``-loglik(beta) / N + penalty / 2 * |beta|^2`` (lifelines' ``penalizer`` convention, so
    a penalty means the same here and there). Columns should be standardised. Exact second-order
    steps converge in a handful of iterations, about 100x faster than a general-purpose fitter, which
    matters when nested cross-validation fits it hundreds of times.
    """
    x = np.asarray(x, dtype=float)
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=bool)
    n, d = x.shape
    order = np.argsort(-time, kind="stable")
    xs, ts, es = x[order], time[order], event[order]
    group_end = np.searchsorted(-ts, -ts, side="right") - 1  # last member of each tie group
    xe = xs[es]

    def objective(beta: np.ndarray, derivatives: bool):
        eta = xs @ beta
        shift = eta.max()
        w = np.exp(eta - shift)
        s0 = np.cumsum(w)[group_end][es]
        loglik = float(np.sum(eta[es] - shift - np.log(s0)))
        value = -loglik / n + 0.5 * penalty * float(beta @ beta)
        if not derivatives:
            return value, None, None
        s1 = np.cumsum(w[:, None] * xs, axis=0)[group_end][es]
        mean = s1 / s0[:, None]
        gradient = -(xe - mean).sum(0) / n + penalty * beta
        s2 = np.cumsum(w[:, None, None] * (xs[:, :, None] * xs[:, None, :]), axis=0)[group_end][es]
        hessian = (s2 / s0[:, None, None] - mean[:, :, None] * mean[:, None, :]).sum(0) / n + penalty * np.eye(d)
        return value, gradient, hessian

    beta = np.zeros(d)
    if d == 0 or not event.any():
        return beta
    value, gradient, hessian = objective(beta, True)
    for _ in range(max_iterations):
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        size = 1.0
        while size > 1e-4:
            candidate = beta - size * step
            new_value, _, _ = objective(candidate, False)
            if new_value <= value + 1e-12:
                break
            size /= 2
        else:
            break
        beta = candidate
        converged = abs(value - new_value) < tolerance
        value, gradient, hessian = objective(beta, True)
        if converged:
            break
    return beta
