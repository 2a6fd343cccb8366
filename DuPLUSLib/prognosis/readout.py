"""What a clinician sees for one patient: risk, percentile, group, S(2y), S(5y), and the KM plot.

The reference is the training cohort, kept in the bundle: its risk scores (for the percentile), the
cut points of the risk groups (tertiles by default: thirds are large enough for a readable
Kaplan-Meier curve each, and finer than a median split), and each group's Kaplan-Meier curve with
its 95% confidence band and numbers at risk. The patient's own predicted curve is drawn over those
curves, so the question "where does this patient stand?" is answered against observed outcomes,
not only against the model.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["KaplanMeierCurve", "RiskReference", "PatientReadout", "TIME_UNITS", "horizon_in_unit", "horizon_label",
           "default_horizons", "plot_readout"]

TIME_UNITS = {"years": 1.0, "months": 12.0, "weeks": 52.1775, "days": 365.25}  # units per year
GROUP_LABELS = {1: ["all"], 2: ["low", "high"], 3: ["low", "intermediate", "high"],
                4: ["low", "low-intermediate", "high-intermediate", "high"]}


DEFAULT_HORIZONS_YEARS = (2.0, 5.0)


def horizon_in_unit(years: float, unit: str) -> float:
    if unit not in TIME_UNITS:
        raise ValueError(f"unknown time unit '{unit}'; choose one of {', '.join(TIME_UNITS)}")
    return years * TIME_UNITS[unit]


def default_horizons(unit: str) -> list[float]:
    """2 and 5 years, in the cohort's time unit (rounded to a whole unit: 24 months, 730 days)."""
    return [float(round(horizon_in_unit(y, unit), 0 if unit != "years" else 2)) for y in DEFAULT_HORIZONS_YEARS]


def horizon_label(time: float, unit: str) -> str:
    """``"24 months (2.0 years)"``: the horizon in the cohort's unit, with years beside it when they differ."""
    text = f"{time:g} {unit}"
    if unit != "years":
        text += f" ({time / TIME_UNITS[unit]:.1f} years)"
    return text


@dataclass
class KaplanMeierCurve:
    """One risk group's observed survival in the training cohort (lifelines' KM, exponential Greenwood CI)."""

    label: str
    timeline: list[float]
    survival: list[float]
    lower: list[float]
    upper: list[float]
    at_risk_times: list[float]
    at_risk: list[int]
    patients: int
    events: int

    @classmethod
    def fit(cls, label: str, time: np.ndarray, event: np.ndarray, at_risk_times: Sequence[float]) -> "KaplanMeierCurve":
        from lifelines import KaplanMeierFitter

        fitter = KaplanMeierFitter().fit(time, event)
        band = fitter.confidence_interval_survival_function_
        return cls(
            label=label,
            timeline=[float(t) for t in fitter.survival_function_.index],
            survival=[float(s) for s in fitter.survival_function_.iloc[:, 0]],
            lower=[float(v) for v in band.iloc[:, 0]],
            upper=[float(v) for v in band.iloc[:, 1]],
            at_risk_times=[float(t) for t in at_risk_times],
            at_risk=[int(np.count_nonzero(time >= t)) for t in at_risk_times],
            patients=int(len(time)),
            events=int(np.count_nonzero(event)),
        )


@dataclass
class RiskReference:
    """The training cohort's risk distribution, risk groups and their Kaplan-Meier curves."""

    training_risk: list[float]  # sorted
    thresholds: list[float]  # risk cut points between consecutive groups
    labels: list[str]
    curves: list[KaplanMeierCurve]
    time_unit: str = "years"
    max_follow_up: float = 0.0
    horizons: list[float] = field(default_factory=list)  # survival read-out times, in time_unit; [] = 2 and 5 years

    @classmethod
    def build(cls, risk: np.ndarray, time: np.ndarray, event: np.ndarray, groups: int = 3,
              time_unit: str = "years", horizons: Sequence[float] | None = None) -> "RiskReference":
        if groups not in GROUP_LABELS:
            raise ValueError(f"risk groups must be 1 to 4, not {groups}")
        risk, time, event = np.asarray(risk, float), np.asarray(time, float), np.asarray(event, bool)
        # Quantile cut points that tie (few distinct risks, e.g. one binary covariate) would leave groups
        # empty and label the lowest-risk patients "intermediate": keep only cut points that split
        # patients, and name the groups by how many there really are.
        quantiles = np.quantile(risk, np.arange(1, groups) / groups)
        thresholds = sorted({float(q) for q in quantiles if q > risk.min()})
        groups = len(thresholds) + 1
        membership = np.searchsorted(thresholds, risk, side="right")
        ticks = _nice_ticks(float(time.max()))
        curves = [KaplanMeierCurve.fit(label, time[membership == g], event[membership == g], ticks)
                  for g, label in enumerate(GROUP_LABELS[groups]) if np.any(membership == g)]
        horizons = [float(h) for h in (horizons or default_horizons(time_unit))]
        if any(h <= 0 for h in horizons):
            raise ValueError(f"survival horizons must be positive times in {time_unit}, not {horizons}")
        return cls(sorted(float(r) for r in risk), thresholds, list(GROUP_LABELS[groups]), curves, time_unit,
                   float(time.max()), horizons)

    def readout_horizons(self) -> list[float]:
        return list(self.horizons) or default_horizons(self.time_unit)

    def group_of(self, risk: float) -> str:
        return self.labels[min(int(np.searchsorted(self.thresholds, risk, side="right")), len(self.labels) - 1)]

    def percentile(self, risk: float) -> float:
        """Share of training patients (in %) with a risk at or below this one."""
        return float(100.0 * np.searchsorted(self.training_risk, risk, side="right") / len(self.training_risk))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RiskReference":
        values = dict(values)
        values["curves"] = [KaplanMeierCurve(**c) for c in values["curves"]]
        return cls(**values)


@dataclass
class PatientReadout:
    """One patient's prediction, ready for a report, a table node or a plot."""

    sentence: str
    risk_score: float  # log-hazard relative to the average training patient
    hazard_ratio: float  # exp(risk_score)
    percentile: float
    risk_group: str
    survival: dict[str, dict[str, float]]  # "24 months (2.0 years)" -> {"time", "estimate", "lower", "upper", "beyond_follow_up"}
    curve_times: list[float]
    curve: list[float]
    curve_lower: list[float]
    curve_upper: list[float]
    time_unit: str = "years"
    image_features: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. fields the training cohort never recorded
    contributions: list[dict] = field(default_factory=list)  # [{"name", "value", "contribution"}], largest first
    model_kind: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def contribution_text(self, top: int = 6) -> str:
        """``"stage (IV) +0.52, age (70) +0.21, ..."``: what moved this patient's log-hazard, largest first."""
        shown = [c for c in self.contributions if abs(c["contribution"]) >= 0.005][:top]
        if not shown:
            return ""
        parts = [f"{c['name']} ({c['value']}) {c['contribution']:+.2f}" for c in shown]
        rest = len([c for c in self.contributions if abs(c["contribution"]) >= 0.005]) - len(shown)
        return ("What drove this risk (log-hazard vs the average training patient): " + ", ".join(parts)
                + (f"; {rest} smaller" if rest > 0 else "") + ".")

    def summary_text(self) -> str:
        lines = [self.sentence,
                 f"Risk score {self.risk_score:+.2f} (hazard ratio {self.hazard_ratio:.2f} vs the average "
                 f"training patient), {_ordinal(self.percentile)} percentile: {self.risk_group} risk group."]
        for name, s in self.survival.items():
            note = " (beyond the training follow-up)" if s["beyond_follow_up"] else ""
            lines.append(f"Predicted survival at {name}: {100 * s['estimate']:.0f}% "
                         f"(95% interval {100 * s['lower']:.0f}-{100 * s['upper']:.0f}%){note}.")
        if self.contribution_text():
            lines.append(self.contribution_text())
        if self.model_kind:
            kind = {"coxph": "penalised CoxPH", "head": "DuPLUS text + numbers head", "ensemble":
                    "ensemble of penalised CoxPH and the DuPLUS head"}.get(self.model_kind, self.model_kind)
            lines.append(f"Model: {kind}.")
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)


def _ordinal(value: float) -> str:
    number = int(round(value))
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _nice_ticks(end: float, count: int = 6) -> list[float]:
    raw = end / max(count - 1, 1)
    magnitude = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    return [float(t) for t in np.arange(0.0, end + 1e-9, step)]


# ------------------------------------------------------------------------------------- plot
def _plot_contributions(axes, readout: PatientReadout, top: int = 10) -> None:
    """Horizontal bars: each covariate's contribution to this patient's log-hazard (red raises risk)."""
    shown = readout.contributions[:top][::-1]
    if not shown:
        axes.text(0.5, 0.5, "no per-covariate contributions\n(model with a hidden layer)", ha="center",
                  va="center", transform=axes.transAxes, fontsize=9)
        axes.set_axis_off()
        return
    values = [c["contribution"] for c in shown]
    axes.barh(range(len(shown)), values, color=["#c62828" if v > 0 else "#2e7d32" for v in values])
    axes.set_yticks(range(len(shown)), [f"{c['name']} = {c['value']}"[:38] for c in shown], fontsize=8)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("contribution to log-hazard (vs the average training patient)", fontsize=8)
    axes.set_title(f"What drove this patient's risk (score {readout.risk_score:+.2f})", fontsize=10)
    axes.grid(axis="x", alpha=0.3)



GROUP_COLOURS = {"low": "#2e7d32", "low-intermediate": "#7cb342", "intermediate": "#f9a825",
                 "high-intermediate": "#ef6c00", "high": "#c62828", "all": "#455a64"}


def plot_readout(readout: PatientReadout, reference: RiskReference, path: str | os.PathLike[str]) -> Path:
    """Kaplan-Meier curves per risk group (bands, numbers at risk) with the patient's curve over them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(12.0, 5.8))
    grid = figure.add_gridspec(2, 2, height_ratios=[4, 1], width_ratios=[3, 2])
    axes = figure.add_subplot(grid[0, 0])
    table = figure.add_subplot(grid[1, 0], sharex=axes)
    _plot_contributions(figure.add_subplot(grid[:, 1]), readout)
    for curve in reference.curves:
        colour = GROUP_COLOURS.get(curve.label, None)
        axes.step(curve.timeline, curve.survival, where="post", color=colour,
                  label=f"{curve.label} risk (n={curve.patients}, {curve.events} events)")
        axes.fill_between(curve.timeline, curve.lower, curve.upper, step="post", color=colour, alpha=0.15)
    axes.step(readout.curve_times, readout.curve, where="post", color="black", linewidth=2.2,
              label=f"this patient ({readout.risk_group} risk)")
    axes.fill_between(readout.curve_times, readout.curve_lower, readout.curve_upper, step="post",
                      color="black", alpha=0.12)
    for name, s in readout.survival.items():
        axes.errorbar([s["time"]], [s["estimate"]], yerr=[[s["estimate"] - s["lower"]], [s["upper"] - s["estimate"]]],
                      fmt="o", color="black", capsize=3)
        axes.annotate(f"{name}: {100 * s['estimate']:.0f}%", (s["time"], s["estimate"]),
                      textcoords="offset points", xytext=(6, 6), fontsize=8)
    axes.set_ylim(0, 1.02)
    axes.set_ylabel("overall survival")
    axes.set_title("Kaplan-Meier by risk group (training cohort) and this patient's prediction", fontsize=10)
    axes.legend(loc="lower left", fontsize=8, frameon=False)
    axes.grid(alpha=0.3)
    # numbers at risk, one row per group, under the time axis
    table.set_ylim(-0.5, len(reference.curves) - 0.5)
    table.set_yticks(range(len(reference.curves)), [c.label for c in reversed(reference.curves)], fontsize=8)
    for row, curve in enumerate(reversed(reference.curves)):
        for t, n in zip(curve.at_risk_times, curve.at_risk):
            table.text(t, row, str(n), ha="center", va="center", fontsize=8,
                       color=GROUP_COLOURS.get(curve.label, "black"))
    table.set_xlabel(f"time ({reference.time_unit})")
    table.set_title("number at risk", fontsize=8, loc="left")
    table.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        table.spines[side].set_visible(False)
    table.set_xticks(reference.curves[0].at_risk_times)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
    return path
