"""The dual-prompt network: shapes, one pass for many prompts, context conditioning, modality stems."""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import TEXT_DIM, one_thread, random_network, small_network_config  # noqa: F401
from DuPLUSLib.network import DuPLUSNet, NetworkConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def unit_vectors(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


def image_batch(batch: int = 2, size: tuple[int, int, int] = (16, 12, 8), seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def network() -> DuPLUSNet:
    return random_network("film", seed=1)


@torch.no_grad()
def test_output_has_one_channel_per_prompt_on_the_input_grid(network):
    logits = network(image_batch(2, (16, 12, 8)), "CT", unit_vectors(TEXT_DIM, seed=1), unit_vectors(3, TEXT_DIM, seed=2))
    assert logits.shape == (2, 3, 16, 12, 8)
    assert torch.isfinite(logits).all()


@torch.no_grad()
def test_several_prompts_in_one_pass_equal_the_same_prompts_one_at_a_time(network):
    images, context, targets = image_batch(), unit_vectors(TEXT_DIM, seed=1), unit_vectors(4, TEXT_DIM, seed=2)
    together = network(images, "CT", context, targets)
    for index in range(4):
        alone = network(images, "CT", context, targets[index : index + 1])
        assert (together[:, index] - alone[:, 0]).abs().max() < 1e-5


@torch.no_grad()
def test_all_prompts_share_one_backbone_pass(network):
    calls = []
    network.stems["CT"].register_forward_hook(lambda module, inputs, output: calls.append(1))
    network(image_batch(), "CT", unit_vectors(TEXT_DIM, seed=1), unit_vectors(5, TEXT_DIM, seed=2))
    assert len(calls) == 1


@torch.no_grad()
def test_each_output_channel_depends_only_on_its_own_prompt(network):
    images, context, targets = image_batch(), unit_vectors(TEXT_DIM, seed=1), unit_vectors(2, TEXT_DIM, seed=2)
    changed = targets.clone()
    changed[1] = unit_vectors(TEXT_DIM, seed=9)
    before, after = network(images, "CT", context, targets), network(images, "CT", context, changed)
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_the_head_gives_the_same_logits_and_gradients_in_voxel_chunks_as_in_one_piece(network, monkeypatch):
    images, context, targets = image_batch(), unit_vectors(TEXT_DIM, seed=1), unit_vectors(3, TEXT_DIM, seed=2)

    def logits_and_gradient(chunk_values: int) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(type(network.head), "chunk_values", chunk_values)
        monkeypatch.setattr(type(network.head), "min_chunk_voxels", 1)
        network.zero_grad()
        logits = network(images, "CT", context, targets)
        logits.sigmoid().square().mean().backward()
        return logits.detach(), network.head.controller.weight.grad.clone()

    whole, whole_grad = logits_and_gradient(10**9)
    chunked, chunked_grad = logits_and_gradient(2 * 3 * 100)  # 100 voxels of 1,536 per chunk, the last one short
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(whole_grad, chunked_grad, atol=1e-6)


@pytest.mark.parametrize("normalised", [True, False])
def test_hidden_units_pushed_far_below_zero_still_let_the_head_learn_only_when_normalised(normalised):
    """The failure seen in training: a prompt whose generated hidden biases sit far below zero."""
    from dataclasses import replace

    torch.manual_seed(3)
    network = DuPLUSNet(replace(small_network_config("film", TEXT_DIM), head_normalisation=normalised))
    head = network.head
    c = head.head_channels
    hidden_biases = [c * c, c * c + c + c * c]  # offsets of the two hidden layers' biases
    with torch.no_grad():
        for offset in hidden_biases:
            head.controller.bias[offset : offset + c] = -40.0
    logits = network(image_batch(), "CT", unit_vectors(TEXT_DIM, seed=1), unit_vectors(2, TEXT_DIM, seed=2))
    logits.sigmoid().mean().backward()
    varies = bool(logits.detach().std(dim=(2, 3, 4)).min() > 1e-3)
    learns = bool(head.controller.weight.grad[: c * c].abs().max() > 1e-6)
    assert varies == normalised and learns == normalised


@torch.no_grad()
def test_untrained_context_conditioning_is_the_identity():
    torch.manual_seed(0)
    fresh = DuPLUSNet(small_network_config("film")).eval()
    images, targets = image_batch(), unit_vectors(2, TEXT_DIM, seed=2)
    first = fresh(images, "CT", unit_vectors(TEXT_DIM, seed=1), targets)
    second = fresh(images, "CT", unit_vectors(TEXT_DIM, seed=3), targets)
    assert torch.equal(first, second)


def test_film_folded_into_the_norm_equals_norm_then_film_in_values_and_gradients():
    torch.manual_seed(6)
    block = random_network("film", seed=6).encoder[1].blocks[0]
    with torch.no_grad():
        block.norm1.weight.uniform_(0.5, 1.5)
        block.norm1.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, block.norm1.num_features, 6, 5, 4, requires_grad=True)
    contexts = torch.stack([unit_vectors(TEXT_DIM, seed=1), unit_vectors(TEXT_DIM, seed=3)])  # one per sample

    folded = block.conditioning(x, block.norm1, contexts)
    (folded_grad,) = torch.autograd.grad(folded.square().sum(), x)
    gamma, beta = block.conditioning.generator(contexts)[:, :, None, None, None].chunk(2, dim=1)
    separate = block.norm1(x) * (1 + gamma) + beta  # FiLM as published, after the norm
    (separate_grad,) = torch.autograd.grad(separate.square().sum(), x)

    assert gamma.abs().max() > 1e-2 and beta.abs().max() > 1e-2  # the modulation does something
    torch.testing.assert_close(folded, separate, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded_grad, separate_grad, rtol=1e-4, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("conditioning", ["film", "gate"])
def test_changing_the_context_prompt_changes_the_output_once_its_generator_is_trained(conditioning):
    network = random_network(conditioning, seed=4)
    images, targets = image_batch(), unit_vectors(2, TEXT_DIM, seed=2)
    abdomen = network(images, "CT", unit_vectors(TEXT_DIM, seed=1), targets)
    thorax = network(images, "CT", unit_vectors(TEXT_DIM, seed=3), targets)
    assert (abdomen - thorax).abs().max() > 1e-3


@torch.no_grad()
def test_target_prompt_alone_network_runs_and_ignores_the_context():
    network = random_network("none", seed=5)
    images, targets = image_batch(), unit_vectors(2, TEXT_DIM, seed=2)
    first = network(images, "MRI", unit_vectors(TEXT_DIM, seed=1), targets)
    second = network(images, "MRI", unit_vectors(TEXT_DIM, seed=3), targets)
    assert first.shape == (2, 2, 16, 12, 8)
    assert torch.equal(first, second)


@torch.no_grad()
def test_mixed_modalities_in_a_batch_equal_per_sample_passes(network):
    images, targets = image_batch(3), unit_vectors(2, TEXT_DIM, seed=2)
    contexts = unit_vectors(3, TEXT_DIM, seed=1)
    modalities = ["MRI", "CT", "US"]
    together = network(images, modalities, contexts, targets)
    for index, modality in enumerate(modalities):
        alone = network(images[index : index + 1], modality, contexts[index], targets)
        assert (together[index] - alone[0]).abs().max() < 1e-5


@torch.no_grad()
def test_per_sample_target_prompts_equal_per_sample_passes(network):
    images, context = image_batch(2), unit_vectors(TEXT_DIM, seed=1)
    targets = unit_vectors(2, 3, TEXT_DIM, seed=2)  # [batch, prompts, text_dim]
    together = network(images, "PET", context, targets)
    for index in range(2):
        alone = network(images[index : index + 1], "PET", context, targets[index])
        assert (together[index] - alone[0]).abs().max() < 1e-5


@torch.no_grad()
def test_each_modality_has_its_own_first_block(network):
    images, context, targets = image_batch(1), unit_vectors(TEXT_DIM, seed=1), unit_vectors(1, TEXT_DIM, seed=2)
    assert not torch.allclose(network(images, "CT", context, targets), network(images, "MRI", context, targets))


@pytest.mark.parametrize("size", [(15, 12, 8), (16, 12, 9)])
def test_spatial_size_not_a_multiple_of_the_downsampling_is_refused(network, size):
    with pytest.raises(ValueError, match="multiple of 2"):
        network(image_batch(1, size), "CT", unit_vectors(TEXT_DIM, seed=1), unit_vectors(1, TEXT_DIM, seed=2))


def test_unknown_modality_is_refused_naming_the_known_ones(network):
    with pytest.raises(ValueError, match="XR is not one of CT, MRI, PET, US"):
        network(image_batch(1), "XR", unit_vectors(TEXT_DIM, seed=1), unit_vectors(1, TEXT_DIM, seed=2))


def test_one_modality_per_sample_is_required(network):
    with pytest.raises(ValueError, match="2 modalities for a batch of 3"):
        network(image_batch(3), ["CT", "MRI"], unit_vectors(TEXT_DIM, seed=1), unit_vectors(1, TEXT_DIM, seed=2))


def test_image_without_a_channel_axis_is_refused(network):
    with pytest.raises(ValueError, match=r"\[B, 1, k, j, i\]"):
        network(image_batch(1)[:, 0], "CT", unit_vectors(TEXT_DIM, seed=1), unit_vectors(1, TEXT_DIM, seed=2))


def test_network_config_round_trips_through_a_dict():
    config = small_network_config("gate")
    assert NetworkConfig.from_dict(config.to_dict()) == config


def test_network_config_refuses_unknown_settings():
    with pytest.raises(ValueError, match="unknown network setting.*dropout"):
        NetworkConfig.from_dict({**small_network_config().to_dict(), "dropout": 0.1})


def test_network_config_refuses_an_unknown_conditioning():
    with pytest.raises(ValueError, match="film, gate or none"):
        NetworkConfig(conditioning="attention")


def test_default_network_is_small_enough_for_a_laptop():
    assert DuPLUSNet().count_parameters() < 30_000_000
