"""The DuPLUS prognosis model: EHR text (+ numbers, + image features) -> a Cox survival head.

Design, and why:

* **EHR as text.** The EHR sentence (:func:`ehr.ehr_sentence`) goes through the same frozen text
  encoder that reads the segmentation prompts, as DuPLUS does. The numeric codes of the same fields
  go in beside it: with tens of events, the sentence embedding alone cannot learn that "stage IV"
  is worse than "stage II" as reliably as one ordinal number can (an ablation in PROGNOSIS_CARD.md).
* **Fusion by concatenation**, not FiLM. The Cox log-hazard is additive in its inputs, so
  concatenating the (projected, standardised) blocks and applying one linear layer is exactly a
  penalised Cox model over all of them; FiLM would make every image weight depend on the EHR, an
  interaction with many more parameters than cohorts of ~100 events can estimate. An optional
  small hidden layer (``hidden > 0``) adds non-linear terms on top of the linear ones.
* **Training**: Breslow partial likelihood, L2 penalty (weight decay), full-batch Adam, early
  stopping on held-out parts of the training patients; the chosen number of epochs is then used to
  refit on all of them, so no patient is wasted. The sentence-embedding (and network-feature)
  columns get a 10x heavier penalty than the clinical numbers: with the same penalty their 16
  components added variance and cost C-index on the larynx cohort (0.643 against 0.663 for CoxPH);
  with it the model scores 0.672 (PROGNOSIS_CARD.md).
* **Individual curves** come from Breslow's baseline hazard on the training patients; intervals
  come from bootstrap refits of the head (resampled patients), which carry the uncertainty of the
  weights and of the baseline hazard together.

Three kinds of model share this class, so all of them save, load and explain themselves alike
(each is one linear layer over the same standardised features):

* ``head``: the DuPLUS head above (text + numbers + image, Adam, early stopping);
* ``coxph``: a ridge-penalised Cox model on the numbers only (no sentence embedding), fitted by
  Newton-Raphson, its penalty chosen by held-out partial likelihood inside the training patients;
* ``ensemble``: the average of the two log-hazards, i.e. the average of their weights.

:mod:`selection` chooses among them by nested cross-validation.

Public API in lifelines' style: :meth:`PrognosisModel.fit`, :meth:`~PrognosisModel.predict_risk`,
:meth:`~PrognosisModel.predict_survival_function`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .cox import RiskSetIndex, breslow_cumulative_hazard, cox_negative_log_likelihood, fit_penalised_cox, survival_at
from .features import FeatureSpace, PatientInputs

__all__ = ["PrognosisConfig", "SurvivalHead", "FittedHead", "PrognosisModel", "MODEL_KINDS"]

MODEL_KINDS = ("coxph", "head", "ensemble")
COX_PENALTIES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # the coxph kind picks one by held-out likelihood
LEARNT_BLOCKS = ("text", "deep")  # wide learnt representations: the coxph kind leaves them out


@dataclass
class PrognosisConfig:
    """Everything that decides how a prognosis model is built and trained; stored in the bundle."""

    use: tuple[str, ...] = ("numeric", "text")  # feature blocks: numeric, extra, text, image, deep
    kind: str = "head"  # coxph, head or ensemble (see the module docstring)
    cox_penalty: float | None = None  # coxph: ridge penalty; None = chosen on held-out training patients
    text_components: int = 16  # principal components kept of the sentence embedding
    deep_components: int = 4  # principal components kept of the pooled network features
    hidden: int = 0  # width of the optional non-linear branch; 0 = linear Cox head
    dropout: float = 0.1
    weight_decay: float = 0.1  # L2 penalty (per event) on the head's weights
    text_penalty: float = 10.0  # multiplies the L2 penalty on the text and deep blocks' weights
    learning_rate: float = 0.04
    max_epochs: int = 60
    early_stopping: bool = True  # False: train max_epochs (the L2 penalty alone regularises)
    validation_fraction: float = 0.25
    inner_splits: int = 3  # held-out splits whose averaged loss curve picks the number of epochs
    min_epochs: int = 20
    n_bootstrap: int = 20  # refits for the survival intervals; 0 = point estimates only
    seed: int = 0

    def __post_init__(self) -> None:
        self.use = tuple(self.use)
        if not self.use:
            raise ValueError("a prognosis model needs at least one feature block")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind '{self.kind}'; choose one of {', '.join(MODEL_KINDS)}")
        if self.kind != "head" and self.hidden:
            raise ValueError("the coxph and ensemble kinds are linear: use hidden=0")
        if self.kind == "coxph" and not set(self.use) - set(LEARNT_BLOCKS):
            raise ValueError("the coxph kind needs a block of numbers (numeric, extra or image)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PrognosisConfig":
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown prognosis setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


class SurvivalHead(nn.Module):
    """Log-hazard of the fused features: a linear Cox term plus an optional small MLP term."""

    def __init__(self, width: int, hidden: int = 0, dropout: float = 0.1):
        super().__init__()
        self.linear = nn.Linear(width, 1, bias=False)  # Cox models have no intercept
        nn.init.zeros_(self.linear.weight)
        self.mlp = None
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.ELU(),
                                     nn.Linear(hidden, 1, bias=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        risk = self.linear(features).squeeze(-1)
        if self.mlp is not None:
            risk = risk + self.mlp(features).squeeze(-1)
        return risk

    def penalty(self, column_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of squared weights; ``column_weights`` scales the linear term's penalty per input column."""
        linear = self.linear.weight[0] ** 2
        total = (linear * column_weights).sum() if column_weights is not None else linear.sum()
        if self.mlp is not None:
            total = total + sum((p ** 2).sum() for name, p in self.mlp.named_parameters() if name.endswith("weight"))
        return total


@dataclass
class FittedHead:
    """One trained head and the Breslow baseline of the patients it was trained on."""

    head: SurvivalHead
    event_times: np.ndarray
    cumulative_hazard: np.ndarray
    risk_offset: float  # mean training log-hazard, subtracted so risk 0 = an average patient

    def risk(self, features: np.ndarray) -> np.ndarray:
        self.head.eval()
        with torch.no_grad():
            raw = self.head(torch.as_tensor(features, dtype=torch.float32)).double().numpy()
        return raw - self.risk_offset


@dataclass
class PrognosisModel:
    """Fit on a cohort's :class:`PatientInputs`; predict risk and survival for new patients."""

    config: PrognosisConfig = field(default_factory=PrognosisConfig)
    features: FeatureSpace | None = None
    main: FittedHead | None = None
    replicates: list[FittedHead] = field(default_factory=list)
    epochs: int = 0
    training_risk: np.ndarray | None = None
    cox_penalty: float | None = None  # the penalty the coxph / ensemble kinds used

    # ------------------------------------------------------------------------------------ fit
    def fit(self, inputs: PatientInputs, time: np.ndarray, event: np.ndarray) -> "PrognosisModel":
        time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=bool)
        if not event.any():
            raise ValueError("cannot fit a survival model to patients with no events")
        config = self.config
        self.features = FeatureSpace.fit(inputs, config.use, config.text_components, config.deep_components)
        x = self.features.transform(inputs)
        self._column_penalty = self._penalty_per_column()
        rng = np.random.default_rng(config.seed)
        if config.kind in ("head", "ensemble"):
            self.epochs = self._choose_epochs(x, time, event, rng)
        if config.kind in ("coxph", "ensemble"):
            self.cox_penalty = config.cox_penalty if config.cox_penalty is not None else \
                self._choose_cox_penalty(x, time, event, np.random.default_rng(config.seed + 7))
        self.main = self._fit_kind(x, time, event, seed=config.seed)
        self.training_risk = self.main.risk(x)
        self.replicates = []
        for b in range(config.n_bootstrap):
            rows = _bootstrap_rows(event, rng)
            self.replicates.append(self._fit_kind(x[rows], time[rows], event[rows], seed=config.seed + 1 + b))
        return self

    def _cox_columns(self) -> np.ndarray:
        """True for the columns the coxph kind uses: every block but the learnt representations."""
        return np.concatenate([np.full(block.width, name not in LEARNT_BLOCKS)
                               for name, block in self.features.blocks.items()])

    def _fit_kind(self, x: np.ndarray, time: np.ndarray, event: np.ndarray, seed: int) -> FittedHead:
        kind = self.config.kind
        if kind == "head":
            return self._fit_head(x, time, event, self.epochs, seed=seed)
        columns = self._cox_columns()
        weights = np.zeros(x.shape[1])
        weights[columns] = fit_penalised_cox(x[:, columns], time, event, self.cox_penalty)
        if kind == "ensemble":
            head = self._fit_head(x, time, event, self.epochs, seed=seed)
            weights = 0.5 * (weights + head.head.linear.weight.detach().double().numpy()[0])
        return _linear_head(weights, x, time, event)

    def _choose_cox_penalty(self, x: np.ndarray, time: np.ndarray, event: np.ndarray, rng: np.random.Generator) -> float:
        """The ridge penalty with the best held-out partial likelihood over a few splits of the training
        patients (likelihood, not C-index: it is smooth, and it also rewards calibrated risks)."""
        columns = self._cox_columns()
        losses = np.zeros(len(COX_PENALTIES))
        used = 0
        for _ in range(max(self.config.inner_splits, 1)):
            train, valid = _stratified_split(event, self.config.validation_fraction, rng)
            if event[valid].sum() < 2 or event[train].sum() < 2:
                continue
            index = RiskSetIndex(time[valid], event[valid])
            for j, penalty in enumerate(COX_PENALTIES):
                beta = fit_penalised_cox(x[train][:, columns], time[train], event[train], penalty)
                risk = torch.as_tensor(x[valid][:, columns] @ beta, dtype=torch.float64)
                losses[j] += float(cox_negative_log_likelihood(risk, index))
            used += 1
        return float(COX_PENALTIES[int(np.argmin(losses))]) if used else 0.1

    @classmethod
    def ensemble_of(cls, cox: "PrognosisModel", head: "PrognosisModel", inputs: PatientInputs, time: np.ndarray,
                    event: np.ndarray) -> "PrognosisModel":
        """The ensemble of a fitted coxph and a fitted head model of the same patients, without refitting.

        Gives the same weights as fitting ``kind="ensemble"`` with the head's settings: the coxph
        model's blocks are a subset of the head's and their transforms were fitted on the same rows.
        """
        if head.main.head.mlp is not None:
            raise ValueError("an ensemble needs a linear head (hidden=0)")
        x = head.features.transform(inputs)
        weights = head.main.head.linear.weight.detach().double().numpy()[0].copy()
        cox_weights = cox.main.head.linear.weight.detach().double().numpy()[0]
        offset = cox_offset = 0
        for name, block in head.features.blocks.items():
            if name in cox.features.blocks:
                width = cox.features.blocks[name].width
                weights[offset:offset + block.width] += cox_weights[cox_offset:cox_offset + width]
                cox_offset += width
            offset += block.width
        config = PrognosisConfig.from_dict({**head.config.to_dict(), "kind": "ensemble", "n_bootstrap": 0,
                                            "cox_penalty": cox.cox_penalty})
        model = cls(config, head.features, epochs=head.epochs, cox_penalty=cox.cox_penalty)
        model.main = _linear_head(0.5 * weights, x, np.asarray(time, float), np.asarray(event, bool))
        model.training_risk = model.main.risk(x)
        return model

    def contributions(self, inputs: PatientInputs) -> tuple[list[str], np.ndarray]:
        """Each input column's share of the log-hazard, ``weight x standardised value``: ``[patients, columns]``.

        The features are centred on the training patients, so a contribution is relative to the
        average training patient, and the contributions add up to the risk score (plus the small
        constant ``-risk_offset``). Only linear heads (``hidden = 0``) decompose this way.
        """
        features, main = self._checked()
        if main.head.mlp is not None:
            raise ValueError("a model with a hidden layer has no per-column contributions; train with hidden=0")
        weights = main.head.linear.weight.detach().double().numpy()[0]
        return features.names, features.transform(inputs) * weights

    def _penalty_per_column(self) -> torch.Tensor:
        """Heavier shrinkage for the wide learnt representations (sentence embedding, network
        features) than for the clinical numbers and tumour measurements: their components carry
        signal only in some directions, and with tens of events the rest is fitted noise."""
        weights = [np.full(block.width, self.config.text_penalty if name in ("text", "deep") else 1.0)
                   for name, block in self.features.blocks.items()]
        return torch.as_tensor(np.concatenate(weights), dtype=torch.float32)

    def _choose_epochs(self, x: np.ndarray, time: np.ndarray, event: np.ndarray, rng: np.random.Generator) -> int:
        """Early stopping: the epoch with the lowest held-out partial likelihood, averaged over a few
        stratified splits of the training patients (one split of ~20 patients is too noisy to trust)."""
        config = self.config
        if not config.early_stopping:
            return config.max_epochs
        curves = []
        for split in range(config.inner_splits):
            train, valid = _stratified_split(event, config.validation_fraction, rng)
            if event[valid].sum() < 2 or event[train].sum() < 2:
                continue
            torch.manual_seed(config.seed + split)
            head = SurvivalHead(x.shape[1], config.hidden, config.dropout)
            optimiser = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
            xt, xv = (torch.as_tensor(x[r], dtype=torch.float32) for r in (train, valid))
            index_t, index_v = RiskSetIndex(time[train], event[train]), RiskSetIndex(time[valid], event[valid])
            curve = []
            for _ in range(config.max_epochs):
                self._step(head, optimiser, xt, index_t)
                head.eval()
                with torch.no_grad():
                    curve.append(float(cox_negative_log_likelihood(head(xv), index_v)))
            curves.append(curve)
        if not curves:
            return config.max_epochs // 4
        return max(int(np.argmin(np.mean(curves, axis=0))) + 1, config.min_epochs)

    def _fit_head(self, x: np.ndarray, time: np.ndarray, event: np.ndarray, epochs: int, seed: int) -> FittedHead:
        config = self.config
        torch.manual_seed(seed)
        head = SurvivalHead(x.shape[1], config.hidden, config.dropout)
        optimiser = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
        xt = torch.as_tensor(x, dtype=torch.float32)
        index = RiskSetIndex(time, event)
        for _ in range(epochs):
            self._step(head, optimiser, xt, index)
        head.eval()
        with torch.no_grad():
            raw = head(xt).double().numpy()
        offset = float(raw.mean())
        event_times, cumulative = breslow_cumulative_hazard(raw - offset, time, event)
        return FittedHead(head, event_times, cumulative, offset)

    def _step(self, head: SurvivalHead, optimiser: torch.optim.Optimizer, x: torch.Tensor, index: RiskSetIndex) -> None:
        head.train()
        optimiser.zero_grad()
        loss = cox_negative_log_likelihood(head(x), index) + self.config.weight_decay * head.penalty(
            getattr(self, "_column_penalty", None))
        loss.backward()
        optimiser.step()

    # -------------------------------------------------------------------------------- predict
    def _checked(self) -> tuple[FeatureSpace, FittedHead]:
        if self.features is None or self.main is None:
            raise RuntimeError("the model is not fitted; call fit() or load a bundle")
        return self.features, self.main

    def predict_risk(self, inputs: PatientInputs) -> np.ndarray:
        """Log-hazard relative to the average training patient (higher = worse prognosis)."""
        features, main = self._checked()
        return main.risk(features.transform(inputs))

    def predict_survival_function(self, inputs: PatientInputs, times: Sequence[float]) -> np.ndarray:
        """``S(t | patient)`` as an array ``[patients, times]``."""
        features, main = self._checked()
        return survival_at(np.asarray(times, float), main.event_times, main.cumulative_hazard,
                           main.risk(features.transform(inputs)))

    def predict_survival_interval(self, inputs: PatientInputs, times: Sequence[float],
                                  level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Interval of ``S(t | patient)``: (lower, upper), each ``[patients, times]``.

        The bootstrap replicates give the spread of ``log(-log S)``; the interval is the point
        estimate plus or minus z standard deviations on that scale, then transformed back. On that
        scale survival is unbounded and roughly normal (the same reason lifelines' Kaplan-Meier bands
        use it), so the interval stays in [0, 1] and always contains the point estimate, which a
        percentile interval of a biased bootstrap does not. Without replicates both bounds equal
        the point estimate.
        """
        from statistics import NormalDist

        features, _ = self._checked()
        x = features.transform(inputs)
        point = self.predict_survival_function(inputs, times)
        if not self.replicates:
            return point, point
        curves = np.stack([survival_at(np.asarray(times, float), r.event_times, r.cumulative_hazard, r.risk(x))
                           for r in self.replicates])
        z = NormalDist().inv_cdf(0.5 + level / 2)
        # A replicate whose curve is still exactly 1 (no event yet in its resample) or 0 has no
        # log(-log S); it says nothing about the spread there and would blow it up, so it is left out.
        transformed = np.where((curves > 0) & (curves < 1), _cloglog(curves), np.nan)
        counts = np.sum(np.isfinite(transformed), axis=0)
        filled = np.where(np.isfinite(transformed), transformed, 0.0)
        mean = filled.sum(0) / np.maximum(counts, 1)
        variance = (np.where(np.isfinite(transformed), (transformed - mean) ** 2, 0.0)).sum(0) / np.maximum(counts, 1)
        spread = np.where(counts >= 2, np.sqrt(variance), 0.0)
        centre = _cloglog(point)
        lower = np.exp(-np.exp(centre + z * spread))
        upper = np.exp(-np.exp(centre - z * spread))
        defined = (point > 0) & (point < 1)  # S = 1 before the first event, S = 0 after total loss
        return np.where(defined, lower, point), np.where(defined, upper, point)


def _linear_head(weights: np.ndarray, x: np.ndarray, time: np.ndarray, event: np.ndarray) -> FittedHead:
    """A :class:`FittedHead` holding fixed linear weights, with the Breslow baseline of (x, time, event)."""
    head = SurvivalHead(len(weights))
    with torch.no_grad():
        head.linear.weight.copy_(torch.as_tensor(weights, dtype=torch.float32)[None])
    head.eval()
    raw = x @ weights
    offset = float(raw.mean())
    event_times, cumulative = breslow_cumulative_hazard(raw - offset, time, event)
    return FittedHead(head, event_times, cumulative, offset)


def _cloglog(survival: np.ndarray) -> np.ndarray:
    clipped = np.clip(survival, 1e-12, 1 - 1e-12)
    return np.log(-np.log(clipped))


# ---------------------------------------------------------------------------------- sampling
def _stratified_split(event: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows for training and validation, with events and censored patients split alike."""
    valid = []
    for group in (np.flatnonzero(event), np.flatnonzero(~event)):
        shuffled = rng.permutation(group)
        valid.extend(shuffled[: int(round(len(group) * fraction))])
    valid_mask = np.zeros(len(event), dtype=bool)
    valid_mask[valid] = True
    return np.flatnonzero(~valid_mask), np.flatnonzero(valid_mask)


def _bootstrap_rows(event: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bootstrap sample that has at least one event."""
    while True:
        rows = rng.integers(0, len(event), len(event))
        if event[rows].any():
            return rows
