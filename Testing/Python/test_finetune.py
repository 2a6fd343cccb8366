"""LoRA adapters and ``duplus finetune``: small, loads on top of its own base only, changes the
output, and starts as the identity; full fine-tuning as the comparison arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from DuPLUSLib.bundle import load_bundle
from DuPLUSLib.errors import ModelBundleError
from DuPLUSLib.network import DuPLUSNet, NetworkConfig
from DuPLUSLib.training.adapters import (
    LoRALinear,
    add_adapters,
    load_adapter,
    load_bundle_with_adapter,
    save_adapter,
    trainable_summary,
)
from DuPLUSLib.training.decathlon import write_toy_dataset
from DuPLUSLib.training.evaluate import parse_data_spec
from DuPLUSLib.training.finetune import FinetuneSettings, finetune, prepare_cases, save_result

torch.set_num_threads(1)


def tiny_bundle(folder: Path, code: str = "onehot", seed: int = 0) -> Path:
    """A tiny untrained model, saved (an adapter needs its base's sha256)."""
    from DuPLUSLib.bundle import BundleConfig, InferenceSettings, ModelBundle
    from DuPLUSLib.ontology import load_ontology
    from DuPLUSLib.training.prompt_codes import build_prompt_codes

    torch.manual_seed(seed)
    ontology = load_ontology()
    if code == "text":  # only the sentences the toy data uses: encoding all of them takes seconds
        from DuPLUSLib.ontology import Prompt
        from DuPLUSLib.text import DEFAULT_TEXT_ENCODER_ID, PromptEmbeddings, TextEncoder

        encoder = TextEncoder()
        texts = [ontology.context_text("CT", "abdomen")] + [
            t for s in ("liver", "liver_tumour") for t in ontology.target_texts(Prompt("CT", "abdomen", s))]
        codes = PromptEmbeddings.build(texts, encoder)
        entry = {"id": DEFAULT_TEXT_ENCODER_ID, "path": None, "dim": encoder.dim}
    else:
        codes, entry = build_prompt_codes(ontology, code)
    network_config = NetworkConfig(channels=(8, 16), encoder_blocks=1, decoder_blocks=1, conditioned_decoder_stages=1,
                                   text_dim=codes.dim, head_embed=16, condition_hidden=16, head_channels=4)
    config = BundleConfig("tiny", network_config, InferenceSettings(spacing=(3.0, 3.0, 3.0), patch_size=(16, 16, 16)),
                          ontology.version, text_encoder=entry, weights_dtype="float32")
    return ModelBundle(None, config, DuPLUSNet(network_config).eval(), codes, ontology).save(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    base_dir = tiny_bundle(root / "base")
    data = write_toy_dataset(root / "toy", cases=2)
    base = load_bundle(base_dir)
    cases = prepare_cases(base, [parse_data_spec(str(data))])
    result = finetune(base, cases, FinetuneSettings(rank=2, steps=6, augment=False, precision="fp32"))
    adapter = save_result(result, root / "adapter")
    return root, base_dir, data, cases, result, adapter


def logits(bundle, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, 16, 16, 16, generator=generator)
    ontology = bundle.ontology
    context = bundle.embeddings.get([ontology.context_text("CT", "abdomen")])[0]
    from DuPLUSLib.ontology import Prompt

    targets = bundle.embeddings.get([ontology.target_text(Prompt("CT", "abdomen", s)) for s in ("liver", "liver_tumour")])
    with torch.no_grad():
        return bundle.network(image, "CT", context, targets)


# ------------------------------------------------------------------------------------ adapters
def test_lora_starts_as_the_identity():
    base = torch.nn.Linear(6, 4)
    wrapped = LoRALinear(torch.nn.Linear(6, 4), rank=2, alpha=4)
    wrapped.base.load_state_dict(base.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(wrapped(x), base(x))
    assert not wrapped.base.weight.requires_grad and wrapped.lora_a.requires_grad


def test_merging_a_lora_layer_keeps_its_output():
    wrapped = LoRALinear(torch.nn.Linear(6, 4), rank=2, alpha=4)
    torch.nn.init.normal_(wrapped.lora_b)
    x = torch.randn(3, 6)
    torch.testing.assert_close(wrapped.merged()(x), wrapped(x))


def test_the_trainable_fraction_of_the_default_network_is_at_most_five_percent():
    network = DuPLUSNet(NetworkConfig())
    total = network.count_parameters()
    targets = add_adapters(network, rank=8)
    summary = trainable_summary([p for p in network.parameters() if p.requires_grad], total)
    assert summary["trainable_fraction"] <= 0.05
    assert summary["trainable_parameters"] > 0
    assert any("conditioning.generator" in t for t in targets) and "head.controller" in targets
    frozen = [n for n, p in network.named_parameters() if "conv" in n and p.requires_grad]
    assert frozen == []  # the backbone's convolutions stay frozen


def test_the_adapter_loads_on_top_of_the_base_and_changes_its_output(setup):
    _, base_dir, _, _, result, adapter = setup
    base = load_bundle(base_dir)
    adapted = load_adapter(base, adapter)
    assert not torch.allclose(logits(adapted), logits(base))
    torch.testing.assert_close(logits(adapted), logits(result.bundle))  # on disk = in memory
    assert adapted.config.training["adapter"]["rank"] == 2
    # the base bundle object is left untouched
    torch.testing.assert_close(logits(base), logits(load_bundle(base_dir)))


def test_the_adapter_folder_is_small_and_records_its_base(setup):
    _, base_dir, _, _, result, adapter = setup
    info = json.loads((adapter / "adapter.json").read_text(encoding="utf-8"))
    assert info["base_sha256"] == load_bundle(base_dir).config.files["weights"]["sha256"]
    assert info["rank"] == 2 and info["trainable_fraction"] == pytest.approx(result.trainable["trainable_fraction"])
    assert info["trainable_fraction"] < 0.05
    assert (adapter / "adapter.safetensors").stat().st_size < 0.2 * (base_dir / "model.safetensors").stat().st_size


def test_merged_and_unmerged_adapters_agree(setup):
    _, base_dir, _, _, _, adapter = setup
    base = load_bundle(base_dir)
    torch.testing.assert_close(logits(load_adapter(base, adapter, merge=False)), logits(load_adapter(base, adapter)))


def test_an_adapter_is_refused_on_another_base(setup, tmp_path):
    _, _, _, _, _, adapter = setup
    other = load_bundle(tiny_bundle(tmp_path / "other", seed=1))
    with pytest.raises(ModelBundleError, match="trained on base weights"):
        load_adapter(other, adapter)


def test_a_tampered_adapter_is_refused(setup, tmp_path):
    import shutil

    _, base_dir, _, _, _, adapter = setup
    copy = Path(shutil.copytree(adapter, tmp_path / "tampered"))
    data = bytearray((copy / "adapter.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="sha256"):
        load_adapter(load_bundle(base_dir), copy)


def test_a_folder_that_is_no_adapter_is_refused(setup, tmp_path):
    _, base_dir, *_ = setup
    with pytest.raises(ModelBundleError, match="no adapter.json"):
        load_bundle_with_adapter(base_dir, tmp_path)


def test_an_untrained_adapter_leaves_the_output_unchanged(setup, tmp_path):
    _, base_dir, _, cases, _, _ = setup
    base = load_bundle(base_dir)
    result = finetune(base, cases, FinetuneSettings(rank=2, steps=0, norms=False, augment=False))
    save_adapter(tmp_path / "zero", result.network, result.info)
    torch.testing.assert_close(logits(load_adapter(base, tmp_path / "zero")), logits(base))


def test_fine_tuning_lowers_the_loss_on_its_cases(setup):
    _, base_dir, _, cases, _, _ = setup
    result = finetune(load_bundle(base_dir), cases,
                      FinetuneSettings(rank=4, steps=24, augment=False, precision="fp32", learning_rate=0.01))
    assert sum(result.losses[-4:]) / 4 < sum(result.losses[:4]) / 4


# -------------------------------------------------------------------------------- full fine-tuning
def test_full_fine_tuning_trains_everything_and_writes_a_model(setup, tmp_path):
    _, base_dir, _, cases, _, _ = setup
    base = load_bundle(base_dir)
    result = finetune(base, cases, FinetuneSettings(full=True, steps=3, augment=False, precision="fp32"))
    assert result.info is None and result.trainable["trainable_fraction"] == 1.0
    folder = save_result(result, tmp_path / "full")
    tuned = load_bundle(folder)
    assert tuned.config.training["finetuned_from"] == base.config.files["weights"]["sha256"]
    assert not torch.allclose(logits(tuned), logits(base))


# ----------------------------------------------------------------------------- the text encoder
def test_a_text_lora_adapter_carries_recomputed_prompt_embeddings(tmp_path):
    base_dir = tiny_bundle(tmp_path / "base", code="text")
    base = load_bundle(base_dir)
    data = write_toy_dataset(tmp_path / "toy", cases=1)
    cases = prepare_cases(base, [parse_data_spec(str(data))])
    result = finetune(base, cases, FinetuneSettings(rank=2, text_lora_rank=2, steps=2, augment=False,
                                                    precision="fp32", learning_rate=0.01))
    assert result.info.text_lora == {"rank": 2, "alpha": 4}
    folder = save_result(result, tmp_path / "adapter")
    adapted = load_adapter(base, folder)
    sentence = base.ontology.context_text("CT", "abdomen")
    assert set(adapted.embeddings.texts) == set(base.embeddings.texts)
    assert not torch.allclose(adapted.embeddings.get([sentence]), base.embeddings.get([sentence]))


def test_a_one_hot_model_has_no_text_encoder_to_adapt(setup):
    _, base_dir, _, cases, _, _ = setup
    with pytest.raises(ModelBundleError, match="no text encoder"):
        finetune(load_bundle(base_dir), cases, FinetuneSettings(text_lora_rank=2, steps=1))


# ---------------------------------------------------------------------------------- the commands
def test_duplus_finetune_then_evaluate_with_the_adapter(setup, tmp_path):
    from DuPLUSLib.cli import main

    _, base_dir, data, _, _, _ = setup
    adapter = tmp_path / "centre_b"
    assert main(["finetune", "--model", str(base_dir), "--data", str(data), "--lora-rank", "2", "--steps", "2",
                 "-o", str(adapter), "--device", "cpu"]) == 0
    assert (adapter / "adapter.json").is_file()
    report = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(base_dir), "--adapter", str(adapter), "--data", str(data),
                 "-o", str(report), "--device", "cpu"]) == 0
    assert json.loads(report.read_text(encoding="utf-8"))["model"]["adapter"]["name"] == "centre_b"
    # a second run into the same folder is refused, not silently overwritten
    assert main(["finetune", "--model", str(base_dir), "--data", str(data), "--steps", "1", "-o", str(adapter)]) == 2


def test_duplus_finetune_says_that_the_base_models_post_processing_is_inherited(setup, tmp_path, capsys):
    """An adapted model keeps its base's largest_component list (applied by the base bundle's
    settings); the command says so, and names the structures, rather than leave it implicit."""
    from DuPLUSLib.cli import main

    _, base_dir, data, *_ = setup
    base = load_bundle(base_dir)
    base.config.inference.largest_component = ("liver",)
    with_post = base.save(tmp_path / "base_with_post")
    assert main(["finetune", "--model", str(with_post), "--data", str(data), "--lora-rank", "2", "--steps", "1",
                 "-o", str(tmp_path / "adapter"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["largest_component"] == ["liver"]
    assert "keeps the base model's post-processing: only the largest part of liver" in err
    assert main(["finetune", "--model", str(base_dir), "--data", str(data), "--lora-rank", "2", "--steps", "1",
                 "-o", str(tmp_path / "plain"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["largest_component"] == [] and "post-processing" not in err


def test_new_centre_phantoms_become_fine_tuning_cases(setup):
    _, base_dir, *_ = setup
    source = parse_data_spec("phantom:CT/abdomen:seeds=2000-2001:spacing=8:intensity_scale=1.2:noise=2")
    cases = prepare_cases(load_bundle(base_dir), [source])
    assert [c.name for c in cases] == ["CT-abdomen-2000", "CT-abdomen-2001"]
    assert "liver" in cases[0].annotated and cases[0].image.dtype.name == "float16"
