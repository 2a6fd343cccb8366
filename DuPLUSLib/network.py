"""The dual-prompt residual U-Net of DuPLUS, written for this project from the published design.

* A modality-specific first block turns CT, MRI, PET or ultrasound intensities into shared features.
* The **context prompt** (T1, "A computed tomography scan of the abdomen") conditions every block of
  the encoder and of the deepest decoder stages, by FiLM (``x * (1 + gamma) + beta``) or by a
  text-generated sigmoid gate.
* The **target prompt** (T2, "A computed tomography scan of a liver") drives a dynamic head: a
  controller maps [pooled bottleneck features, projected text] to the weights of three 1x1x1
  convolutions applied to the last decoder features, one sigmoid channel per prompt. All prompts
  share one backbone pass; each output channel depends only on its own prompt.

Tensors are ``[batch, channel, k, j, i]``. Spatial sizes must be multiples of ``2 ** (stages - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NetworkConfig", "DuPLUSNet", "FeatureMaps"]

MODALITIES = ("CT", "MRI", "PET", "US")


@dataclass
class NetworkConfig:
    """Width, depth and conditioning of the network; stored in every bundle's config.json."""

    channels: tuple[int, ...] = (16, 32, 64, 128, 160)
    encoder_blocks: int = 2
    decoder_blocks: int = 1
    conditioned_decoder_stages: int = 3  # the deepest N decoder stages are conditioned, as in DuPLUS
    conditioning: str = "film"  # "film", "gate" or "none" (target prompt alone: the ablation)
    modalities: tuple[str, ...] = MODALITIES
    text_dim: int = 384
    head_embed: int = 256
    head_channels: int = 8
    condition_hidden: int = 128
    head_normalisation: bool = True  # normalise the dynamic head's hidden layers over their channels

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.modalities = tuple(self.modalities)
        if self.conditioning not in ("film", "gate", "none"):
            raise ValueError(f"conditioning must be film, gate or none, not '{self.conditioning}'")
        if len(self.channels) < 2:
            raise ValueError("the network needs at least two stages")

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "NetworkConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown network setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


class ContextConditioning(nn.Module):
    """Normalises one block's features and modulates them per channel by the context prompt.

    Starts as the identity modulation (last layer zero-initialised), so an untrained conditioning
    path leaves the backbone as a plain residual U-Net.
    """

    def __init__(self, text_dim: int, channels: int, hidden: int, mode: str):
        super().__init__()
        self.mode = mode
        outputs = 2 * channels if mode == "film" else channels + 1
        self.generator = nn.Sequential(nn.Linear(text_dim, hidden), nn.ELU(), nn.Linear(hidden, outputs))
        nn.init.zeros_(self.generator[-1].weight)
        nn.init.zeros_(self.generator[-1].bias)

    def forward(self, x: torch.Tensor, norm: nn.InstanceNorm3d, context: torch.Tensor) -> torch.Tensor:
        """``modulate(norm(x))``: FiLM ``* (1 + gamma) + beta`` or a text-generated sigmoid gate.

        FiLM after an affine instance norm is itself an affine map per (sample, channel), so it is
        folded into the norm's weight and bias: one pass over the features, as in an unconditioned
        block, instead of three.
        """
        params = self.generator(context).to(x.dtype)
        if self.mode == "film":
            gamma, beta = params.chunk(2, dim=1)  # [B, C] each
            scale = 1 + gamma
            batch, channels = x.shape[:2]
            # instance norm of [B, C, ...] is batch norm of [1, B*C, ...] with input statistics
            out = F.batch_norm(x.reshape(1, batch * channels, *x.shape[2:]), None, None,
                               (norm.weight * scale).reshape(-1), (norm.bias * scale + beta).reshape(-1),
                               training=True, eps=norm.eps)
            return out.view_as(x)
        h = norm(x)
        params = params[:, :, None, None, None]
        weight, bias = params[:, :-1], params[:, -1:]
        gate = torch.sigmoid((h * weight).sum(1, keepdim=True) + bias)
        return h * (2 * gate)  # 2 * sigmoid(0) = 1: identity at start


class ResidualBlock(nn.Module):
    """Pre-activation residual block (norm, modulate, ELU, conv) x 2, optionally text-conditioned."""

    def __init__(self, in_channels: int, out_channels: int, conditioning: ContextConditioning | None):
        super().__init__()
        self.norm1 = nn.InstanceNorm3d(in_channels, affine=True)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.conditioning = conditioning
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # ELU in place: its inputs are fresh normalised tensors that nothing else holds, and on
        # CPU a new tensor per ELU cost about a third of its time (backward uses ELU's output).
        h = self.norm1(x) if self.conditioning is None else self.conditioning(x, self.norm1, context)
        h = self.conv1(F.elu(h, inplace=True))
        h = self.conv2(F.elu(self.norm2(h), inplace=True))
        return h + self.skip(x)


class Stage(nn.Module):
    def __init__(self, blocks: Sequence[ResidualBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context)
        return x


@dataclass
class FeatureMaps:
    """What the backbone hands to heads: the last decoder features and the bottleneck."""

    decoder: torch.Tensor  # [B, channels[0], k, j, i]
    bottleneck: torch.Tensor  # [B, channels[-1], k/2^s, j/2^s, i/2^s]
    pooled: torch.Tensor = field(default=None)  # [B, head_embed], the head's image code


class TargetPromptHead(nn.Module):
    """The dynamic head of the CLIP-Driven Universal Model, as DuPLUS uses it for the target prompt.

    For each (sample, prompt) a controller emits the weights and biases of three 1x1x1 convolutions
    (c -> c -> c -> 1); they are applied to ``head_channels`` decoder features. Prompts never mix.
    """

    chunk_values = 65_536  # (sample, prompt, voxel) triples per chunk: ~2 MB per fp32 intermediate
    min_chunk_voxels = 2_048

    def __init__(self, config: NetworkConfig):
        super().__init__()
        c = config.head_channels
        self.head_channels = c
        # Hidden layers normalised over their channels at each voxel. Without it they die: early in
        # training the BCE on rare structures is cut fastest by pushing every hidden unit of their
        # prompts far below zero, where ELU is flat, and those prompts then give a constant for
        # good (a 3,200-step run ended with every hidden unit saturated for 10 of 15 CT-abdomen
        # prompts, vertebrae included). Normalised, some units of every prompt stay active, as the
        # backbone's pre-activation norms keep its own.
        self.normalise = config.head_normalisation
        self.param_shapes = [(c, c), (c, c), (1, c)]
        n_params = sum(o * i + o for o, i in self.param_shapes)
        self.image_code = nn.Sequential(
            nn.GroupNorm(math.gcd(16, config.channels[-1]), config.channels[-1]),
            nn.ELU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(config.channels[-1], config.head_embed, 1),
        )
        self.text_projection = nn.Sequential(nn.Linear(config.text_dim, config.head_embed), nn.ELU())
        self.controller = nn.Linear(2 * config.head_embed, n_params)
        self.feature_reduction = nn.Sequential(
            nn.GroupNorm(math.gcd(16, config.channels[0]), config.channels[0]),
            nn.ELU(),
            nn.Conv3d(config.channels[0], c, 1),
        )

    def pooled_image_code(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.image_code(bottleneck).flatten(1)

    def forward(self, features: FeatureMaps, targets: torch.Tensor) -> torch.Tensor:
        """``targets`` is ``[N, text_dim]`` (same prompts for every sample) or ``[B, N, text_dim]``."""
        batch = features.decoder.shape[0]
        if targets.dim() == 2:
            targets = targets.unsqueeze(0).expand(batch, -1, -1)
        n_prompts = targets.shape[1]
        image_code = features.pooled if features.pooled is not None else self.pooled_image_code(features.bottleneck)
        text_code = self.text_projection(targets.to(image_code.dtype))
        joint = torch.cat([image_code[:, None].expand(-1, n_prompts, -1), text_code], dim=-1)
        params = self.controller(joint).float()  # [B, N, n_params]
        layers = []
        offset = 0
        for o, i in self.param_shapes:
            weight = params[..., offset : offset + o * i].reshape(batch, n_prompts, o, i)
            offset += o * i
            bias = params[..., offset : offset + o].reshape(batch, n_prompts, o, 1)
            offset += o
            if self.normalise and len(layers) < len(self.param_shapes) - 1:
                weight, bias = _centre_over_outputs(weight, bias)
            layers.append((weight, bias))
        h = self.feature_reduction(features.decoder).float()  # [B, c, k, j, i]
        spatial = h.shape[2:]
        h = h.flatten(2)[:, None]  # [B, 1, c, V]
        # The three layers are cheap in arithmetic but write N x c values per voxel each; run over
        # the whole window at once, those intermediates leave the cache, and 20 prompts cost 5x
        # what 5 do. Chunks of voxels keep them in cache, in training (backward too) and inference.
        chunk = max(self.min_chunk_voxels, self.chunk_values // (batch * n_prompts))
        pieces = []
        for start in range(0, h.shape[-1], chunk):
            out = h[..., start : start + chunk]
            for index, (weight, bias) in enumerate(layers):
                out = torch.matmul(weight, out) + bias
                if index < len(layers) - 1:
                    out = F.elu(_unit_variance_over_channels(out), inplace=True) if self.normalise else F.elu(out)
            pieces.append(out[:, :, 0])
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)  # [B, N, V]
        return out.reshape(batch, n_prompts, *spatial)


def _centre_over_outputs(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights whose outputs have zero mean over the channel axis at every voxel (cheap: per prompt)."""
    return weight - weight.mean(dim=-2, keepdim=True), bias - bias.mean(dim=-2, keepdim=True)


def _unit_variance_over_channels(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Scale zero-mean ``[..., c, V]`` features to unit variance over ``c`` at each voxel.

    The mean square is a matrix product with a row of 1/c: a reduction over the short, strided
    channel axis is several times slower on CPU, and this runs on every chunk of the head.
    """
    mean_square = torch.matmul(x.new_full((1, x.shape[-2]), 1.0 / x.shape[-2]), x * x)
    return x * torch.rsqrt(mean_square + eps)


class DuPLUSNet(nn.Module):
    """Dual-prompt 3D residual U-Net; see the module docstring for the design."""

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config = config or NetworkConfig()
        ch = config.channels

        def conditioning(channels: int, enabled: bool = True) -> ContextConditioning | None:
            if config.conditioning == "none" or not enabled:
                return None
            return ContextConditioning(config.text_dim, channels, config.condition_hidden, config.conditioning)

        self.stems = nn.ModuleDict(
            {m: nn.Conv3d(1, ch[0], 3, padding=1, bias=False) for m in config.modalities}
        )
        self.downsamples = nn.ModuleList(
            [nn.Conv3d(ch[s - 1], ch[s], 3, stride=2, padding=1, bias=False) for s in range(1, len(ch))]
        )
        self.encoder = nn.ModuleList(
            [
                Stage([ResidualBlock(c, c, conditioning(c)) for _ in range(config.encoder_blocks)])
                for c in ch
            ]
        )
        n_decoder = len(ch) - 1
        self.upsamples = nn.ModuleList(
            [nn.ConvTranspose3d(ch[s + 1], ch[s], 2, stride=2, bias=False) for s in range(n_decoder)]
        )
        self.decoder = nn.ModuleList()
        for s in range(n_decoder):
            # decoder stage s works at the resolution of encoder stage s; the deepest ones are conditioned
            depth_from_bottom = n_decoder - s
            enabled = depth_from_bottom <= config.conditioned_decoder_stages
            blocks = [ResidualBlock(2 * ch[s], ch[s], conditioning(2 * ch[s], enabled))]
            blocks += [ResidualBlock(ch[s], ch[s], conditioning(ch[s], enabled)) for _ in range(config.decoder_blocks - 1)]
            self.decoder.append(Stage(blocks))
        self.head = TargetPromptHead(config)
        # Sentence embeddings of different structures share most of their direction (mean cosine
        # about 0.55 for MiniLM); standardising each dimension over the prompt table makes the
        # differences between prompts, which carry the meaning, large from the first step.
        self.register_buffer("prompt_centre", torch.zeros(config.text_dim))
        self.register_buffer("prompt_scale", torch.ones(config.text_dim))

    def set_prompt_statistics(self, table: torch.Tensor) -> None:
        """Standardise prompt embeddings by the statistics of ``table`` (all prompts a model knows)."""
        self.prompt_centre.copy_(table.mean(0))
        self.prompt_scale.copy_(1.0 / (table.std(0) + 1e-3))

    def standardise_prompts(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (embeddings.to(self.prompt_centre.device) - self.prompt_centre) * self.prompt_scale

    # ---------------------------------------------------------------------------------- backbone
    def modality_indices(self, modality: str | Sequence[str], batch: int) -> list[str]:
        names = [modality] * batch if isinstance(modality, str) else list(modality)
        unknown = sorted(set(names) - set(self.config.modalities))
        if unknown:
            raise ValueError(f"modality {unknown[0]} is not one of {', '.join(self.config.modalities)}")
        if len(names) != batch:
            raise ValueError(f"{len(names)} modalities for a batch of {batch}")
        return names

    def stem(self, image: torch.Tensor, modality: str | Sequence[str]) -> torch.Tensor:
        names = self.modality_indices(modality, image.shape[0])
        if len(set(names)) == 1:
            return self.stems[names[0]](image)
        parts, order = [], []
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            parts.append(self.stems[name](image[rows]))
            order.extend(rows)
        return torch.cat(parts)[torch.argsort(torch.tensor(order))]

    def forward_features(
        self, image: torch.Tensor, modality: str | Sequence[str], context: torch.Tensor
    ) -> FeatureMaps:
        """One backbone pass conditioned on the context prompt (``[text_dim]`` or ``[B, text_dim]``)."""
        if image.dim() != 5 or image.shape[1] != 1:
            raise ValueError(f"expected an image [B, 1, k, j, i], got {tuple(image.shape)}")
        bad = [s for s in image.shape[2:] if s % self.config.size_multiple]
        if bad:
            raise ValueError(
                f"spatial size {tuple(image.shape[2:])} is not a multiple of {self.config.size_multiple}"
            )
        if context.dim() == 1:
            context = context.unsqueeze(0)
        context = self.standardise_prompts(context.expand(image.shape[0], -1))
        x = self.stem(image, modality)
        skips = []
        for s, stage in enumerate(self.encoder):
            if s > 0:
                x = self.downsamples[s - 1](x)
            x = stage(x, context)
            skips.append(x)
        bottleneck = x
        for s in reversed(range(len(self.decoder))):
            x = self.upsamples[s](x)
            x = self.decoder[s](torch.cat([x, skips[s]], dim=1), context)
        return FeatureMaps(decoder=x, bottleneck=bottleneck, pooled=self.head.pooled_image_code(bottleneck))

    def forward(
        self,
        image: torch.Tensor,
        modality: str | Sequence[str],
        context: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[B, N, k, j, i]``, one channel per target prompt (apply a sigmoid for probabilities)."""
        return self.head(self.forward_features(image, modality, context), self.standardise_prompts(targets))

    def count_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
