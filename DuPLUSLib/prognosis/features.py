"""From patients to the survival head's input: encoding, imputation, standardisation, projection.

Three blocks, each optional:

* ``numeric``: the EHR's ordinal codes (:func:`ehr.numeric_encoding`);
* ``extra``: every other covariate column of the cohort, typed by :mod:`covariates` (numbers,
  binaries, ordinal ranks, one-hot categories);
* ``text``: the EHR sentence through the frozen text encoder (384 numbers for MiniLM); the sentence
  carries the schema fields and every extra column as ``name: value``;
* ``image``: per-tumour measurements (:mod:`image_features`): volumes, mean intensity;
* ``deep``: the segmentation network's bottleneck features pooled inside each tumour.

Why a projection: a cohort has tens to hundreds of events, while the text embedding has 384
dimensions and the network's bottleneck 160 or more. Each wide block is centred and reduced to its
leading principal components *fitted on the training patients only* (so cross-validation stays
honest), then scaled to unit variance, so one L2 penalty treats every input alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .covariates import ColumnSpec, covariate_sentence, encode_covariates
from .ehr import NUMERIC_FEATURES, EHRRecord, ehr_sentence, numeric_encoding

__all__ = ["PatientInputs", "BlockTransform", "FeatureSpace", "encode_patients"]


@dataclass
class PatientInputs:
    """Raw per-patient inputs, computed once per cohort (the text encoder is the slow part)."""

    numeric: np.ndarray  # [N, len(NUMERIC_FEATURES)], NaN = missing
    text: np.ndarray | None = None  # [N, text_dim]
    image: np.ndarray | None = None  # [N, image_dim], NaN = missing
    image_names: tuple[str, ...] = ()
    deep: np.ndarray | None = None  # [N, deep_dim], NaN = missing
    sentences: list[str] = field(default_factory=list)
    extra: np.ndarray | None = None  # [N, extra width], NaN = missing: the typed extra covariates
    extra_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.numeric)

    def subset(self, rows: Sequence[int]) -> "PatientInputs":
        rows = np.asarray(rows)
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return PatientInputs(self.numeric[rows], pick(self.text), pick(self.image), self.image_names,
                             pick(self.deep), [self.sentences[i] for i in rows] if self.sentences else [],
                             pick(self.extra), self.extra_names)

    def block(self, name: str) -> np.ndarray | None:
        return {"numeric": self.numeric, "text": self.text, "image": self.image, "deep": self.deep,
                "extra": self.extra}[name]


def encode_patients(records: Sequence[EHRRecord], text_encoder=None, image: np.ndarray | None = None,
                    image_names: Sequence[str] = (), deep: np.ndarray | None = None,
                    covariates: Sequence[dict] | None = None, columns: Sequence[ColumnSpec] = ()) -> PatientInputs:
    """Numeric codes, sentences and (with an encoder) their embeddings for ``records``.

    ``covariates`` (one dict per patient: column -> value) with their ``columns`` specs add the
    ``extra`` block and ``name: value`` parts to each sentence. Identical sentences are embedded once.
    """
    numeric = np.stack([numeric_encoding(r) for r in records]) if records else np.empty((0, len(NUMERIC_FEATURES)))
    covariates = list(covariates) if covariates else [{} for _ in records]
    sentences = [f"{ehr_sentence(r)} {covariate_sentence(c, columns)}".strip() for r, c in zip(records, covariates)]
    extra, extra_names = None, ()
    if any(c.width for c in columns):
        extra, names, _ = encode_covariates(covariates, columns)
        extra_names = tuple(names)
    text = None
    if text_encoder is not None and sentences:
        unique = list(dict.fromkeys(sentences))
        vectors = np.asarray(text_encoder.encode(unique), dtype=np.float64)
        row = {s: i for i, s in enumerate(unique)}
        text = vectors[[row[s] for s in sentences]]
    if image is not None:
        image = np.asarray(image, dtype=np.float64).reshape(len(records), -1)
    if deep is not None:
        deep = np.asarray(deep, dtype=np.float64).reshape(len(records), -1)
    return PatientInputs(numeric, text, image, tuple(image_names), deep, sentences, extra, extra_names)


@dataclass
class BlockTransform:
    """Impute (training mean) -> optional missing indicators -> centre -> optional PCA -> unit scale.

    All parameters are arrays so that a bundle stores them as safetensors.
    """

    keep: np.ndarray  # bool [D]: columns with information in the training set
    mean: np.ndarray  # [D_kept]
    indicators: np.ndarray  # indices (into kept columns) that get a "was missing" column
    components: np.ndarray | None  # [D_kept, k] or None (no projection)
    scale: np.ndarray  # [output width]
    names: list[str]

    @classmethod
    def fit(cls, values: np.ndarray, names: Sequence[str], max_components: int | None) -> "BlockTransform":
        values = np.asarray(values, dtype=np.float64)
        observed = ~np.isnan(values)
        counts = observed.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), 0.0)
        filled = np.where(observed, values, mean)
        keep = (counts > 0) & (filled.std(0) > 1e-12)
        indicators = np.flatnonzero((counts[keep] < len(values)) & (counts[keep] > 0))
        centred = filled[:, keep] - mean[keep]
        kept_names = [n for n, k in zip(names, keep) if k]
        components = None
        if max_components is not None and centred.shape[1] > max_components:
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            components = vt[:max_components].T
            kept_names = [f"{names[0].split(':')[0]}:pc{i + 1}" for i in range(components.shape[1])]
        transform = cls(keep, mean[keep], indicators, components, np.ones(1), kept_names)
        raw = transform._unscaled(values)
        transform.scale = np.where(raw.std(0) > 1e-12, raw.std(0), 1.0)
        transform.names = kept_names + [f"{kept_names[i] if components is None else names[i]}:missing" for i in indicators]
        return transform

    def _unscaled(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)[:, self.keep]
        missing = np.isnan(values)
        centred = np.where(missing, 0.0, values - self.mean)
        projected = centred @ self.components if self.components is not None else centred
        return np.concatenate([projected, missing[:, self.indicators].astype(float)], axis=1)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return self._unscaled(values) / self.scale

    @property
    def width(self) -> int:
        return int(len(self.scale))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}.keep": self.keep.astype(np.uint8), f"{prefix}.mean": self.mean,
                  f"{prefix}.indicators": self.indicators.astype(np.int64), f"{prefix}.scale": self.scale}
        if self.components is not None:
            arrays[f"{prefix}.components"] = self.components
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, names: list[str]) -> "BlockTransform":
        return cls(arrays[f"{prefix}.keep"].astype(bool), arrays[f"{prefix}.mean"],
                   arrays[f"{prefix}.indicators"].astype(np.int64), arrays.get(f"{prefix}.components"),
                   arrays[f"{prefix}.scale"], names)


BLOCK_ORDER = ("numeric", "extra", "text", "image", "deep")


@dataclass
class FeatureSpace:
    """The fitted transforms of the blocks a model uses, in the fixed order of ``BLOCK_ORDER``."""

    blocks: dict[str, BlockTransform]

    @classmethod
    def fit(cls, inputs: PatientInputs, use: Sequence[str], text_components: int, deep_components: int) -> "FeatureSpace":
        unknown = sorted(set(use) - set(BLOCK_ORDER))
        if unknown:
            raise ValueError(f"unknown feature block(s) {unknown}; choose from {', '.join(BLOCK_ORDER)}")
        blocks: dict[str, BlockTransform] = {}
        for name in (b for b in BLOCK_ORDER if b in use):
            values = inputs.block(name)
            if values is None:
                raise ValueError(f"the model uses {name} features and the cohort has none")
            if name == "numeric":
                names, components = list(NUMERIC_FEATURES), None
            elif name == "extra":
                names, components = list(inputs.extra_names), None
            elif name == "image":
                names, components = [f"image:{n}" for n in inputs.image_names] or \
                    [f"image:{i}" for i in range(values.shape[1])], None
            else:
                names = [f"{name}:{i}" for i in range(values.shape[1])]
                components = text_components if name == "text" else deep_components
            blocks[name] = BlockTransform.fit(values, names, components)
        return cls(blocks)

    def transform(self, inputs: PatientInputs) -> np.ndarray:
        parts = []
        for name, block in self.blocks.items():
            values = inputs.block(name)
            if values is None:
                raise ValueError(f"this model uses {name} features and none were given")
            parts.append(block.transform(values))
        return np.concatenate(parts, axis=1) if parts else np.empty((len(inputs), 0))

    @property
    def width(self) -> int:
        return sum(b.width for b in self.blocks.values())

    @property
    def names(self) -> list[str]:
        return [n for b in self.blocks.values() for n in b.names]
