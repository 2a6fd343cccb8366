"""Training cases and the patches drawn from them.

A :class:`TrainingCase` is one volume already on the model's grid (the same
:mod:`DuPLUSLib.preprocessing` path inference takes) with the masks of the structures its dataset
*annotates*. Datasets annotate different structures; a structure that is not annotated carries no
loss (partial labels), while an annotated structure with an empty mask is a true negative.

Cases are built once per run, in worker processes, and cached as ``.npz`` (no pickle) in the run
folder, so a resumed run starts at once.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..imageio import VolumeImage, pack_layers
from ..ontology import Ontology, Prompt, load_ontology
from ..preprocessing import IntensityNormalisation, normalise_intensity, resample_mask_to_spacing, resample_to_spacing
from .config import CaseSpec, ConfigError, DatasetSpec

__all__ = ["TrainingCase", "CaseSpec", "case_specs", "build_cases", "PatchSampler", "Batch", "batch_stream"]


@dataclass
class TrainingCase:
    name: str
    dataset: int  # index of its DatasetSpec: sampling weights are per dataset
    modality: str
    region: str
    image: np.ndarray  # float16 [k, j, i], normalised
    layers: np.ndarray  # uint8 [layer, k, j, i], from imageio.pack_layers
    placement: dict[str, tuple[int, int]]  # annotated structure -> (layer, label value)

    @property
    def annotated(self) -> list[str]:
        return list(self.placement)

    @property
    def present(self) -> list[str]:
        """Annotated structures with at least one voxel here (computed once: the sampler asks often)."""
        if not hasattr(self, "_present"):
            self._present = [k for k in self.placement if self.mask(k).any()]
        return self._present

    def mask(self, key: str, region: tuple[slice, ...] = (slice(None),) * 3) -> np.ndarray:
        layer, value = self.placement[key]
        return self.layers[(layer, *region)] == value

    def save(self, path: Path) -> None:
        keys = list(self.placement)
        np.savez_compressed(
            path,
            image=self.image,
            layers=self.layers,
            keys=np.array(keys),
            placement=np.array([self.placement[k] for k in keys], dtype=np.int16).reshape(-1, 2),
            meta=np.array([self.name, str(self.dataset), self.modality, self.region]),
        )

    @classmethod
    def load(cls, path: Path) -> "TrainingCase":
        with np.load(path, allow_pickle=False) as data:
            name, dataset, modality, region = (str(x) for x in data["meta"])
            placement = {str(k): (int(p[0]), int(p[1])) for k, p in zip(data["keys"], data["placement"])}
            return cls(name, int(dataset), modality, region, data["image"], data["layers"], placement)


def make_case(
    name: str,
    dataset: int,
    modality: str,
    region: str,
    image: VolumeImage,
    labels: dict[str, np.ndarray],
    spacing: Sequence[float],
    normalisation: IntensityNormalisation,
) -> TrainingCase:
    """Put an image and its annotated masks on the model grid, exactly as inference will see it."""
    on_grid = resample_to_spacing(image, tuple(spacing))
    normalised = normalise_intensity(on_grid.array, normalisation).astype(np.float16)
    masks = [resample_mask_to_spacing(mask, image, tuple(spacing)) for mask in labels.values()]
    layers, placement = pack_layers(masks)
    return TrainingCase(name, dataset, modality, region, normalised, layers, dict(zip(labels, placement)))


# ------------------------------------------------------------------------------ case recipes
def case_specs(datasets: Sequence[DatasetSpec], seed: int, ontology: Ontology | None = None) -> list[CaseSpec]:
    ontology = ontology or load_ontology()
    specs: list[CaseSpec] = []
    for index, dataset in enumerate(datasets):
        shift = tuple(sorted((dataset.domain_shift or {}).items()))
        if dataset.kind == "phantom":
            contexts = ontology.contexts() if dataset.contexts == "all" else [
                _parse_context(c, ontology) for c in dataset.contexts
            ]
            for modality, region in contexts:
                for case in range(dataset.cases):
                    case_seed = seed * 100_003 + dataset.seed_offset + case
                    specs.append(CaseSpec(f"d{index}-{modality}-{region}-{case_seed}", index, "phantom",
                                          modality, region, case_seed, domain_shift=shift))
        elif dataset.kind == "mni152":
            for case in range(dataset.cases):
                case_seed = seed * 100_003 + dataset.seed_offset + case
                specs.append(CaseSpec(f"d{index}-mni152-{case_seed}", index, "mni152", "MRI", "brain", case_seed))
        elif dataset.kind == "synth":
            from .synthetic import synthetic_case_specs

            specs.extend(synthetic_case_specs(dataset, index, seed, ontology))
        else:
            from .decathlon import decathlon_case_specs

            specs.extend(decathlon_case_specs(dataset, index))
    return specs


def _parse_context(text: str, ontology: Ontology) -> tuple[str, str]:
    parts = text.split("/")
    if len(parts) != 2:
        raise ConfigError(f"context '{text}' must be MODALITY/region, e.g. CT/abdomen")
    modality = ontology.modality_key(parts[0])
    return modality, ontology.region_key(parts[1], modality)


def _build_one(spec: CaseSpec, spacing: tuple[float, ...], normalisation: dict[str, IntensityNormalisation], folder: str) -> str:
    path = Path(folder) / f"{spec.name}.npz"
    if path.exists():
        return str(path)
    if spec.kind == "phantom":
        from ..phantoms import generate_phantom

        kwargs = {}
        if spec.domain_shift:
            from ..phantoms import DomainShift

            kwargs["domain"] = DomainShift(**dict(spec.domain_shift))
        phantom = generate_phantom(spec.modality, spec.region, spec.seed, **kwargs)
        image, labels = phantom.image, phantom.labels
    elif spec.kind == "synth":
        from .synthetic import load_synthetic_case

        image, labels = load_synthetic_case(spec)
    elif spec.kind == "mni152":
        from ..phantoms import mni152_case

        phantom = mni152_case(seed=spec.seed, augment=True)
        image, labels = phantom.image, phantom.labels
    else:
        from .decathlon import load_decathlon_case

        image, labels = load_decathlon_case(spec)
    case = make_case(spec.name, spec.dataset, spec.modality, spec.region, image, labels, spacing,
                     normalisation[spec.modality])
    temporary = path.with_suffix(".partial.npz")
    case.save(temporary)
    temporary.replace(path)
    return str(path)


def build_cases(
    specs: Sequence[CaseSpec],
    folder: Path,
    spacing: Sequence[float],
    normalisation: dict[str, IntensityNormalisation],
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> list[TrainingCase]:
    """Build (or reuse) every case of the run; returns them loaded in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    args = (tuple(spacing), normalisation, str(folder))
    paths: list[str] = []
    if workers > 1 and len(specs) > 1:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for path in pool.map(_build_one, specs, *[[a] * len(specs) for a in args]):
                paths.append(path)
                if progress:
                    progress(len(paths), len(specs))
    else:
        for spec in specs:
            paths.append(_build_one(spec, *args))
            if progress:
                progress(len(paths), len(specs))
    return [TrainingCase.load(Path(p)) for p in paths]


# ------------------------------------------------------------------------------------ patches
@dataclass
class Batch:
    images: torch.Tensor  # [B, 1, k, j, i]
    modalities: list[str]
    contexts: list[str]  # context sentence per sample
    targets_text: list[list[str]]  # target sentences per sample (padded with "")
    masks: torch.Tensor  # [B, N, k, j, i] float
    weights: torch.Tensor  # [B, N]: 1 for annotated prompts, 0 for padding


class PatchSampler:
    """Draws batches: a dataset by weight, a case, a patch centred (often) on a labelled structure,
    the annotated structures' prompts with a paraphrase per step, and MONAI augmentation."""

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        weights: Sequence[float],
        patch_size: Sequence[int],
        seed: int,
        foreground_fraction: float = 0.8,
        max_prompts: int = 16,
        paraphrases: bool = True,
        augment: bool = True,
        ontology: Ontology | None = None,
    ):
        if not cases:
            raise ConfigError("no training cases were built")
        self.ontology = ontology or load_ontology()
        self.cases = list(cases)
        by_dataset: dict[int, list[int]] = {}
        for index, case in enumerate(self.cases):
            by_dataset.setdefault(case.dataset, []).append(index)
        self.datasets = sorted(by_dataset)
        self.case_indices = [by_dataset[d] for d in self.datasets]
        self.dataset_weights = [weights[d] for d in self.datasets]
        self.patch_size = tuple(patch_size)
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.foreground_fraction = foreground_fraction
        self.max_prompts = max_prompts
        self.paraphrases = paraphrases
        self.augmentation = _augmentation(seed) if augment else None

    def state(self) -> dict:
        return {"random": self.rng.getstate()[1][:625], "numpy": self.np_rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.rng.setstate((3, tuple(state["random"]), None))
        self.np_rng.bit_generator.state = state["numpy"]

    def reseed(self, seed: int) -> None:
        """Start a fresh random stream: each loader worker draws its own patches."""
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        if self.augmentation is not None:
            self.augmentation.set_random_state(seed)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.batch(1)

    def batch(self, size: int) -> Batch:
        samples = [self._sample() for _ in range(size)]
        n = max(len(s[3]) for s in samples)
        masks = torch.zeros((size, n, *self.patch_size))
        weights = torch.zeros((size, n))
        texts: list[list[str]] = []
        for b, (image, mask_stack, case, keys) in enumerate(samples):
            masks[b, : len(keys)] = mask_stack
            weights[b, : len(keys)] = 1.0
            sentences = [
                self.ontology.target_text(Prompt(case.modality, case.region, key), self.rng if self.paraphrases else None)
                for key in keys
            ]
            texts.append(sentences + [""] * (n - len(keys)))
        return Batch(
            images=torch.stack([s[0] for s in samples]),
            modalities=[s[2].modality for s in samples],
            contexts=[self.ontology.context_text(s[2].modality, s[2].region) for s in samples],
            targets_text=texts,
            masks=masks,
            weights=weights,
        )

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor, TrainingCase, list[str]]:
        dataset = self.rng.choices(range(len(self.datasets)), self.dataset_weights)[0]
        case = self.cases[self.rng.choice(self.case_indices[dataset])]
        centre = self._centre(case)
        region = _window(centre, case.image.shape, self.patch_size)
        image = _pad_to_patch(case.image[region[1]], region, self.patch_size, float(case.image.min()))
        keys = self._choose_prompts(case, region)
        masks = np.stack([_pad_to_patch(case.mask(k, region[1]), region, self.patch_size, False) for k in keys])
        image_t = torch.from_numpy(image.astype(np.float32))[None]
        masks_t = torch.from_numpy(masks.astype(np.float32))
        if self.augmentation is not None:
            out = self.augmentation({"image": image_t, "label": masks_t})
            image_t, masks_t = out["image"].as_tensor(), (out["label"].as_tensor() > 0.5).float()
        return image_t, masks_t, case, keys

    def _centre(self, case: TrainingCase) -> tuple[int, int, int]:
        if self.rng.random() < self.foreground_fraction:
            # a structure first, then a voxel of it: small structures are found as often as large ones
            keys = case.present
            if keys:
                voxels = np.argwhere(case.mask(self.rng.choice(keys)))
                return tuple(int(v) for v in voxels[self.np_rng.integers(len(voxels))])
        return tuple(int(self.np_rng.integers(s)) for s in case.image.shape)

    def _choose_prompts(self, case: TrainingCase, region) -> list[str]:
        keys = case.annotated
        if len(keys) <= self.max_prompts:
            return keys
        present = [k for k in keys if case.mask(k, region[1]).any()]
        absent = [k for k in keys if k not in present]
        self.rng.shuffle(present)
        self.rng.shuffle(absent)
        return (present + absent)[: self.max_prompts]


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Endless batches of one :class:`PatchSampler`, reseeded in each DataLoader worker."""

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: int):
        super().__init__()
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        self.sampler.reseed(self.seed * 1_000_003 + (info.id if info else 0))
        while True:
            yield self.sampler.batch(self.batch_size)


def batch_stream(sampler: PatchSampler, batch_size: int, workers: int, seed: int) -> Iterator[Batch]:
    """The training loop's batches.

    With ``workers == 0`` they are drawn here, between steps: a run is reproducible to the bit and
    a resume continues the sampler's own stream. A GPU outruns one process's patch drawing and
    augmentation, so with ``workers > 0`` that many processes draw batches, taken from them in
    turn (the DataLoader keeps that order, so the stream still depends only on ``seed`` and
    ``workers``). A resumed run passes a seed that includes its step and draws a fresh stream.
    """
    if workers == 0:
        while True:
            yield sampler.batch(batch_size)
    loader = torch.utils.data.DataLoader(
        _WorkerBatches(sampler, batch_size, seed), batch_size=None, num_workers=workers, prefetch_factor=4,
    )
    yield from loader


def _window(centre, shape, size):
    """Start/stop of a patch around ``centre``, and the in-bounds slices of the volume."""
    starts = [c - s // 2 for c, s in zip(centre, size)]
    starts = [min(max(st, min(0, dim - s)), max(dim - s, 0)) for st, dim, s in zip(starts, shape, size)]
    inside = tuple(slice(max(st, 0), min(st + s, dim)) for st, s, dim in zip(starts, size, shape))
    return starts, inside


def _pad_to_patch(piece: np.ndarray, region, size, fill) -> np.ndarray:
    """Place the in-bounds ``piece`` of a patch into a full patch, padding what lies outside."""
    starts, inside = region
    if piece.shape == tuple(size):
        return piece
    out = np.full(size, fill, dtype=piece.dtype)
    offset = tuple(slice(i.start - st, i.start - st + p) for i, st, p in zip(inside, starts, piece.shape))
    out[offset] = piece
    return out


def _augmentation(seed: int):
    from monai.transforms import (
        Compose,
        RandAffined,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    transform = Compose(
        [
            RandAffined(
                keys=("image", "label"),
                prob=0.5,
                rotate_range=(0.15, 0.15, 0.15),
                scale_range=(0.12, 0.12, 0.12),
                mode=("bilinear", "bilinear"),
                padding_mode="border",
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", std=0.05, prob=0.3),
        ]
    )
    transform.set_random_state(seed)
    return transform
