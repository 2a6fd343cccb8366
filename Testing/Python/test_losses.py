"""The partial-label loss: what counts, what does not, and which way its gradient points."""

from __future__ import annotations

import torch

from DuPLUSLib.training.losses import partial_label_loss


def _cube_target(shape=(8, 8, 8)) -> torch.Tensor:
    target = torch.zeros(shape)
    target[2:6, 2:6, 2:6] = 1
    return target


def test_a_perfect_prediction_costs_almost_nothing_and_an_inverted_one_a_lot():
    target = _cube_target()[None, None]
    weights = torch.ones(1, 1)
    good, _ = partial_label_loss(20 * (2 * target - 1), target, weights)
    bad, parts = partial_label_loss(-20 * (2 * target - 1), target, weights)
    assert good < 0.05
    assert bad > 1.0 and parts["dice"] > 0.95


def test_unannotated_prompts_add_nothing():
    target = torch.stack([_cube_target(), torch.zeros(8, 8, 8)])[None]
    logits = torch.randn(1, 2, 8, 8, 8)
    weights = torch.tensor([[1.0, 0.0]])
    base, _ = partial_label_loss(logits, target, weights)
    changed = logits.clone()
    changed[0, 1] = 50.0  # whatever the model says about an unannotated structure
    again, _ = partial_label_loss(changed, target, weights)
    assert torch.isclose(base, again)


def test_an_absent_annotated_structure_is_taught_by_bce_alone():
    target = torch.stack([_cube_target(), torch.zeros(8, 8, 8)])[None]
    weights = torch.ones(1, 2)
    logits = (20 * (2 * target - 1)).clone()
    _, clean = partial_label_loss(logits, target, weights)
    logits[0, 1, 0, 0, 0] = 20.0  # one false-positive voxel for the absent structure
    loss, noisy = partial_label_loss(logits, target, weights)
    assert noisy["dice"] == clean["dice"]  # no Dice penalty for an empty target ...
    assert noisy["bce"] > clean["bce"] + 0.01  # ... but BCE sees the false positive


def test_the_gradient_raises_logits_inside_a_present_structure_and_lowers_them_outside():
    target = _cube_target()[None, None]
    logits = torch.zeros_like(target, requires_grad=True)
    loss, _ = partial_label_loss(logits, target, torch.ones(1, 1))
    loss.backward()
    assert (logits.grad[target > 0] < 0).all()  # descent raises them
    assert (logits.grad[target == 0] > 0).all()


def test_a_batch_with_only_absent_structures_has_a_finite_loss():
    target = torch.zeros(2, 3, 4, 4, 4)
    loss, parts = partial_label_loss(torch.randn(2, 3, 4, 4, 4), target, torch.ones(2, 3))
    assert torch.isfinite(loss) and parts["dice"] == 0.0 and parts["bce"] > 0
