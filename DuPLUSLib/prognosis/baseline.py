"""The classical baseline: lifelines' CoxPHFitter on the tabular EHR (plus tumour measurements).

It sees the same numeric EHR codes as our model's numeric block (ordinal stage, age...), every extra
covariate column as our model reads it (numbers, binaries, ordinal ranks, one-hot categories) and,
when the cohort has images, the same per-tumour measurements, so a difference in C-index between the two
is the text and network-feature path, not a difference in what each was told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .ehr import NUMERIC_FEATURES
from .features import BlockTransform, PatientInputs

__all__ = ["CoxBaseline"]


@dataclass
class CoxBaseline:
    """``fit`` / ``predict_risk`` / ``predict_survival_function`` around lifelines' CoxPHFitter."""

    use_image: bool = False
    penalizer: float = 0.0  # lifelines' default; raised automatically if the fit does not converge
    transforms: list[BlockTransform] = field(default_factory=list)
    fitter: object | None = None

    def _table(self, inputs: PatientInputs, fit: bool):
        import pandas as pd

        blocks = [(inputs.numeric, list(NUMERIC_FEATURES))]
        if inputs.extra is not None and inputs.extra.shape[1]:
            blocks.append((inputs.extra, [f"extra:{n}" for n in inputs.extra_names]))
        if self.use_image:
            if inputs.image is None:
                raise ValueError("the baseline was asked for image features and the cohort has none")
            blocks.append((inputs.image, [f"image:{n}" for n in inputs.image_names] or
                           [f"image:{i}" for i in range(inputs.image.shape[1])]))
        if fit:
            self.transforms = [BlockTransform.fit(values, names, None) for values, names in blocks]
        parts = [t.transform(values) for t, (values, _) in zip(self.transforms, blocks)]
        names = [n for t in self.transforms for n in t.names]
        return pd.DataFrame(np.concatenate(parts, axis=1), columns=names)

    def fit(self, inputs: PatientInputs, time: np.ndarray, event: np.ndarray) -> "CoxBaseline":
        from lifelines import CoxPHFitter
        from lifelines.exceptions import ConvergenceError

        import warnings

        table = self._table(inputs, fit=True)
        table["_time"], table["_event"] = np.asarray(time, float), np.asarray(event, bool).astype(int)
        for penalizer in (self.penalizer, 0.01, 0.1, 1.0):
            try:
                with warnings.catch_warnings():  # its convergence advice is for people reading a notebook
                    warnings.simplefilter("ignore")
                    self.fitter = CoxPHFitter(penalizer=penalizer).fit(table, "_time", "_event")
                if not np.all(np.isfinite(self.fitter.params_.to_numpy())):
                    raise ConvergenceError("non-finite coefficients")
                self.penalizer = penalizer
                return self
            except ConvergenceError:
                continue
        raise ValueError("lifelines' CoxPHFitter did not converge even with a penalty")

    def predict_risk(self, inputs: PatientInputs) -> np.ndarray:
        return np.asarray(self.fitter.predict_log_partial_hazard(self._table(inputs, fit=False)), dtype=float)

    def predict_survival_function(self, inputs: PatientInputs, times: Sequence[float]) -> np.ndarray:
        curves = self.fitter.predict_survival_function(self._table(inputs, fit=False), times=list(times))
        return np.asarray(curves, dtype=float).T
