"""The partial-label loss of DuPLUS: Dice + BCE per (sample, prompt), only where a label exists."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["partial_label_loss"]


def partial_label_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    dice_weight: float = 1.0,
    bce_weight: float = 0.5,
    smooth: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``logits`` and ``targets`` are ``[B, N, ...]``, ``weights`` ``[B, N]``.

    A prompt whose weight is zero (padding, or a structure its dataset does not annotate) adds
    nothing, so a dataset that labels only the liver never teaches the model that the spleen is
    background. An annotated structure with an empty mask is a real negative and does count.
    """
    logits = logits.float()
    dims = tuple(range(2, logits.dim()))
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * targets).sum(dims)
    dice = 1 - (2 * intersection + smooth) / (probabilities.sum(dims) + targets.sum(dims) + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dims)
    per_prompt = dice_weight * dice + bce_weight * bce
    total_weight = weights.sum().clamp_min(1e-6)
    loss = (per_prompt * weights).sum() / total_weight
    parts = {
        "dice": float((dice.detach() * weights).sum() / total_weight),
        "bce": float((bce.detach() * weights).sum() / total_weight),
    }
    return loss, parts
