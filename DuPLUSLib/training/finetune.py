"""``duplus finetune``: adapt a trained model to new data with low-rank adapters (or, to compare, fully).

The same pieces as ``duplus train`` do the work (cases made by ``make_case`` on the model's grid,
``PatchSampler`` with partial labels and paraphrases, the loop's step function and
``partial_label_loss``), so an adapter learns from exactly what the base model learnt from; only
which parameters move differs:

* LoRA (default): see :mod:`.adapters`: the prompt pathways' Linears get rank-``r`` updates, the
  norm affines train, the backbone convolutions stay frozen; the output is a small adapter folder
  that loads on top of the unchanged base bundle.
* ``text_lora_rank > 0``: peft LoRA on the text encoder too (text-coded models only). Prompts are
  then embedded through the adapted encoder at every step, and afterwards every cached sentence is
  re-embedded and stored with the adapter, so inference still needs no language model.
* ``full``: every network parameter trains (the comparison arm of the new-centre experiment); the
  output is a complete model bundle.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..bundle import ModelBundle
from ..devices import autocast_dtype, select_device
from ..errors import ModelBundleError
from ..text import PromptEmbeddings
from .adapters import (AdapterInfo, add_adapters, base_sha256, merge_adapters, norm_parameter_names, save_adapter,
                       trainable_summary)
from .data import PatchSampler, TrainingCase, make_case
from .evaluate import DataSource, EvaluationCase

from .loop import training_step  # fine-tuning computes the loss exactly as training does

__all__ = ["FinetuneSettings", "FinetuneResult", "finetune", "prepare_cases", "save_result"]


@dataclass
class FinetuneSettings:
    """How to adapt; the defaults suit a handful of labelled cases on a CPU."""

    rank: int = 8
    alpha: float | None = None  # default 2 * rank
    norms: bool = True  # train the InstanceNorm/GroupNorm affines too
    text_lora_rank: int = 0  # > 0: peft LoRA on the text encoder as well
    full: bool = False  # train every network parameter instead (no adapter)
    steps: int = 200
    batch_size: int = 2
    learning_rate: float | None = None  # default 3e-3 for adapters, 5e-4 for full fine-tuning
    weight_decay: float = 1e-5
    warmup_steps: int = 10
    seed: int = 0
    augment: bool = True
    foreground_fraction: float = 0.8
    max_prompts: int = 16
    precision: str = "auto"
    dice_weight: float = 1.0
    bce_weight: float = 0.5

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-4 if self.full else 3e-3


@dataclass
class FinetuneResult:
    bundle: ModelBundle  # the adapted model, ready for a Segmenter (adapters merged)
    network: torch.nn.Module  # the trained network, adapters still separate (what save_adapter reads)
    info: AdapterInfo | None  # None for full fine-tuning
    embeddings: PromptEmbeddings | None  # re-embedded prompts when the text encoder was adapted
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------- cases
def prepare_cases(bundle: ModelBundle, sources: Sequence[DataSource | Iterable[EvaluationCase]]) -> list[TrainingCase]:
    """Labelled cases on the model's grid and intensity scale, one dataset index per source."""
    settings = bundle.config.inference
    cases: list[TrainingCase] = []
    for index, source in enumerate(sources):
        items = source.cases() if isinstance(source, DataSource) else source
        for case in items:
            cases.append(make_case(case.name, index, case.modality, case.region, case.image, case.labels,
                                   settings.spacing, settings.normalisation[case.modality]))
    if not cases:
        raise ModelBundleError("no labelled cases to fine-tune on")
    return cases


# ------------------------------------------------------------------------------------- training
class _EncoderCodes:
    """Prompt codes computed through a (LoRA-adapted) text encoder, with gradients: ``get``/``dim``
    as :class:`PromptEmbeddings` offers them, so the loop's step function takes either."""

    def __init__(self, encoder):
        self.encoder = encoder

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder(list(texts))


def finetune(
    bundle: ModelBundle,
    cases: Sequence[TrainingCase],
    settings: FinetuneSettings | None = None,
    device: str = "cpu",
    name: str = "adapter",
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Adapt ``bundle`` to ``cases``; ``bundle`` itself is not changed."""
    settings = settings or FinetuneSettings()
    torch_device = select_device(device)
    torch.manual_seed(settings.seed)
    base_parameters = bundle.network.count_parameters()
    network = copy.deepcopy(bundle.network).to(torch_device).train()
    targets: list[str] = []
    if settings.full:
        network.requires_grad_(True)
    else:
        targets = add_adapters(network, settings.rank, settings.alpha, settings.norms)
    parameters = [p for p in network.parameters() if p.requires_grad]

    codes = bundle.embeddings
    encoder = None
    if settings.text_lora_rank > 0:
        factory = bundle.text_encoder_factory()
        if factory is None:
            raise ModelBundleError("this model codes prompts one-hot; it has no text encoder to adapt")
        encoder = factory()
        encoder.add_lora(rank=settings.text_lora_rank, alpha=2 * settings.text_lora_rank, dropout=0.0)
        encoder.to(torch_device).eval()  # gradients reach the adapters; the base's own dropout stays off
        codes = _EncoderCodes(encoder)  # type: ignore[assignment]
        text_parameters = [p for p in encoder.parameters() if p.requires_grad]
        parameters += text_parameters
        base_parameters += sum(p.numel() for n, p in encoder.named_parameters() if "lora_" not in n)

    n_datasets = max(case.dataset for case in cases) + 1
    sampler = PatchSampler(
        cases, [1.0] * n_datasets, bundle.config.inference.patch_size, seed=settings.seed,
        foreground_fraction=settings.foreground_fraction, max_prompts=settings.max_prompts,
        paraphrases=True, augment=settings.augment, ontology=bundle.ontology,
    )
    optimiser = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    autocast = autocast_dtype(torch_device, settings.precision)
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(settings.steps):
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, settings.steps, settings.lr, settings.warmup_steps)
        batch = sampler.batch(settings.batch_size)
        loss, _ = training_step(network, batch, codes, torch_device, autocast, settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 12.0)
        optimiser.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step + 1}; lower the learning rate")
        losses.append(value)
        if on_step:
            on_step(step + 1, value)
    seconds = time.perf_counter() - started
    network.eval()
    trainable = trainable_summary(parameters, base_parameters)

    embeddings = None
    if encoder is not None:
        encoder.eval()
        texts = bundle.embeddings.texts
        embeddings = PromptEmbeddings(texts, encoder.encode(texts), encoder_factory=None)

    info = None
    if not settings.full:
        info = AdapterInfo(
            name=name,
            base_sha256=base_sha256(bundle),
            rank=settings.rank,
            alpha=float(settings.alpha if settings.alpha is not None else 2 * settings.rank),
            targets=targets,
            norms=norm_parameter_names(network) if settings.norms else [],
            text_lora={"rank": settings.text_lora_rank, "alpha": 2 * settings.text_lora_rank}
            if encoder is not None else None,
            training={"steps": settings.steps, "cases": len(cases), "learning_rate": settings.lr,
                      "batch_size": settings.batch_size, "seed": settings.seed, "seconds": round(seconds, 1),
                      "final_loss": round(losses[-1], 4) if losses else None},
            **trainable,
        )
    adapted = _adapted_bundle(bundle, network, settings, embeddings, info, trainable)
    return FinetuneResult(adapted, network, info, embeddings, losses, seconds, trainable)


def _adapted_bundle(bundle, network, settings, embeddings, info, trainable) -> ModelBundle:
    merged = merge_adapters(copy.deepcopy(network)).cpu().eval()
    merged.requires_grad_(False)
    config = copy.deepcopy(bundle.config)
    if settings.full:
        config.name = f"{bundle.config.name}-finetuned"
        config.training = dict(config.training) | {"finetuned_from": bundle.config.files.get("weights", {}).get("sha256"),
                                                   "finetune": {"steps": settings.steps, **trainable}}
    else:
        config.name = f"{bundle.config.name}+{info.name}"
        config.training = dict(config.training) | {"adapter": {"name": info.name, "rank": info.rank,
                                                                "trainable_fraction": info.trainable_fraction}}
    return ModelBundle(None, config, merged, embeddings or bundle.embeddings, bundle.ontology)


def _learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_result(result: FinetuneResult, folder: str | Path) -> Path:
    """An adapter folder (LoRA) or a full model bundle (``full``)."""
    folder = Path(folder)
    if result.info is None:
        return result.bundle.save(folder)
    return save_adapter(folder, result.network, result.info, result.embeddings)
