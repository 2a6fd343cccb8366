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
    background. An annotated structure that is absent from the patch is a real negative: it is
    taught by the BCE term alone. Its soft Dice is left out on purpose, because the Dice of an
    empty target is 1 for an all-negative output and near 0 for a single false voxel: with most
    prompts absent from a patch, that term rewards predicting nothing at all, and a run on the
    phantoms sat in exactly that minimum for its first thousand steps.
    """
    logits = logits.float()
    dims = tuple(range(2, logits.dim()))
    probabilities = torch.sigmoid(logits)
    target_volume = targets.sum(dims)
    intersection = (probabilities * targets).sum(dims)
    dice = 1 - (2 * intersection + smooth) / (probabilities.sum(dims) + target_volume + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dims)
    present = weights * (target_volume > 0)
    annotated_weight = weights.sum().clamp_min(1e-6)
    dice_term = (dice * present).sum() / present.sum().clamp_min(1e-6)
    bce_term = (bce * weights).sum() / annotated_weight
    loss = dice_weight * dice_term + bce_weight * bce_term
    return loss, {"dice": float(dice_term.detach()), "bce": float(bce_term.detach())}
