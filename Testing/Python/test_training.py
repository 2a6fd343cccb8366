"""``duplus train`` on a Decathlon folder written by the test: it learns, it evaluates, it resumes
where it stopped, and it refuses what it must refuse. A tiny network on 16^3 patches keeps each
run to a few seconds on two shared cores."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from DuPLUSLib.training.config import ConfigError, TrainingConfig
from DuPLUSLib.training.decathlon import write_toy_dataset
from DuPLUSLib.training.loop import RunFolderError, train

torch.set_num_threads(1)

TINY_NETWORK = {"channels": [8, 16], "encoder_blocks": 1, "decoder_blocks": 1, "conditioned_decoder_stages": 1,
                "head_embed": 16, "condition_hidden": 16, "head_channels": 4}


def tiny_config(data: Path, name: str = "tiny", code: str = "onehot", **training) -> TrainingConfig:
    settings = {"steps": 40, "batch_size": 2, "learning_rate": 0.01, "warmup_steps": 2, "ema_decay": 0.5,
                "checkpoint_every": 20, "log_every": 1, "threads": 1, "data_workers": 1, "precision": "fp32",
                "augment": False} | training
    return TrainingConfig.from_dict({
        "name": name,
        "seed": 0,
        "network": TINY_NETWORK,
        "inference": {"spacing": [3, 3, 3], "patch_size": [16, 16, 16], "overlap": 0.25},
        "prompts": {"code": code},
        "datasets": [{"kind": "decathlon", "path": str(data), "mapping": str(data / "mapping.json")}],
        "training": settings,
    })


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "Task99_Toy", cases=4)


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """One short run, shared: the per-step losses and the model it wrote."""
    losses: list[float] = []
    run = tmp_path_factory.mktemp("run")
    outcome = train(tiny_config(toy), run, device="cpu", progress=False,
                    on_step=lambda step, loss: losses.append(loss))
    return outcome, losses, run


def read_metrics(run: Path) -> list[int]:
    with (run / "metrics.csv").open(encoding="utf-8") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


# ------------------------------------------------------------------------------------- learning
def test_a_few_training_steps_lower_the_loss(trained):
    _, losses, _ = trained
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_a_decathlon_folder_trains_into_a_model_that_evaluates(trained, toy):
    from DuPLUSLib.bundle import load_bundle
    from DuPLUSLib.inference import Segmenter
    from DuPLUSLib.training.evaluate import evaluate_cases, parse_data_spec

    outcome, _, run = trained
    assert outcome.model_dir == run / "model" and outcome.steps == 40
    segmenter = Segmenter(load_bundle(outcome.model_dir), device="cpu", precision="fp32")
    report = evaluate_cases(segmenter, parse_data_spec(str(toy)).cases())
    liver = next(r for r in report["by_structure"] if r["structure"] == "liver")
    assert liver["n"] == 4
    assert liver["dice_mean"] > 0.6  # a bright ellipsoid is learnt in 40 steps
    assert liver["hd95_mean_mm"] is not None and liver["hd95_mean_mm"] < 10


def test_the_run_folder_records_the_config_and_metrics(trained):
    _, _, run = trained
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert record["name"] == "tiny" and record["config"]["datasets"][0]["kind"] == "decathlon"
    assert read_metrics(run) == list(range(1, 41))


# ------------------------------------------------------------------------------ loader workers
def test_loader_workers_draw_the_same_stream_for_the_same_seed_and_different_ones_per_worker(toy, tmp_path):
    from DuPLUSLib.bundle import InferenceSettings
    from DuPLUSLib.training.data import PatchSampler, batch_stream, build_cases, case_specs

    config = tiny_config(toy, augment=True)
    settings = InferenceSettings.from_dict(config.inference)
    cases = build_cases(case_specs(config.datasets, config.seed), tmp_path / "cases", settings.spacing,
                        settings.normalisation, workers=1)

    def first_images(seed: int) -> list[torch.Tensor]:
        sampler = PatchSampler(cases, [1.0], (16, 16, 16), seed=1)
        stream = batch_stream(sampler, 2, workers=2, seed=seed)
        images = [next(stream).images for _ in range(4)]
        stream.close()
        return images

    one, again, other = first_images(5), first_images(5), first_images(6)
    for a, b in zip(one, again):
        torch.testing.assert_close(a, b)  # batches come from the workers in turn: reproducible
    assert not torch.equal(one[0], one[1])  # the two workers draw different patches
    assert not all(torch.equal(a, b) for a, b in zip(one, other))


def test_training_with_loader_workers_lowers_the_loss(toy, tmp_path):
    losses: list[float] = []
    config = tiny_config(toy, loader_workers=2)
    train(config, tmp_path / "run", device="cpu", progress=False, on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_a_stopped_run_stops_its_loader_workers(toy, tmp_path):
    import multiprocessing

    def stop_after_step_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    before = set(multiprocessing.active_children())
    try:
        train(tiny_config(toy, loader_workers=2), tmp_path / "run", device="cpu", progress=False,
              on_step=stop_after_step_3)
    except KeyboardInterrupt:  # checked while the traceback (and the run's frame) is alive, as in a console
        assert set(multiprocessing.active_children()) <= before  # none left drawing batches
    else:
        pytest.fail("the run was not stopped")


def test_settings_added_since_leave_an_older_run_fingerprint_as_it_was():
    """Run folders made before a setting existed must still resume: version 6's recipe keeps the
    fingerprint its run folder and its shipped bundle recorded (2026-12-04), although contrast_phases
    and largest_component came after it, and so do version 7's although in_plane_crops came after it,
    version 8's although label_contrasts came after it, and version 9's although organ_resizes came
    after it, at defaults that leave them out; a non-default value counts."""
    from DuPLUSLib.training.config import load_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    assert load_config(configs / "default-v6.yaml").fingerprint() == "47cc6bbd8bc02314"
    assert load_config(configs / "default-v7.yaml").fingerprint() == "e52d869798aa5244"  # before in_plane_crops
    assert load_config(configs / "default-v8.yaml").fingerprint() == "055a4bb5d8783e8b"  # before label_contrasts
    assert load_config(configs / "default-v9.yaml").fingerprint() == "38388688415072b8"  # before organ_resizes
    before = tiny_config(Path("data")).fingerprint()
    assert tiny_config(Path("data"), loader_workers=4).fingerprint() != before


def test_negative_loader_workers_or_export_steps_are_refused():
    with pytest.raises(ConfigError, match="loader_workers"):
        tiny_config(Path("data"), loader_workers=-1)
    with pytest.raises(ConfigError, match="export_every"):
        tiny_config(Path("data"), export_every=-5)


# ----------------------------------------------------------------------- precomputed prompt table
def test_a_precomputed_prompt_table_gives_the_encoders_own_codes(tmp_path):
    from DuPLUSLib.ontology import load_ontology
    from DuPLUSLib.text import PromptEmbeddings
    from DuPLUSLib.training.prompt_codes import build_prompt_codes

    ontology = load_ontology()
    computed, entry = build_prompt_codes(ontology, "text")
    saved = tmp_path / "table.safetensors"
    computed.save(saved)
    read, read_entry = build_prompt_codes(ontology, "text", table=saved)
    assert read.texts == computed.texts and read_entry == entry
    torch.testing.assert_close(read.get(read.texts), computed.get(computed.texts))

    short = tmp_path / "short.safetensors"
    PromptEmbeddings(computed.texts[1:], computed.get(computed.texts[1:])).save(short)
    with pytest.raises(ConfigError, match=r"lack 1 sentence\(s\) of ontology .*leave the option out"):
        build_prompt_codes(ontology, "text", table=short)
    with pytest.raises(ConfigError, match="prompts.code is 'onehot'"):
        build_prompt_codes(ontology, "onehot", table=saved)


def test_a_run_trains_and_exports_from_a_prompt_table_without_the_text_encoder(toy, tmp_path, monkeypatch):
    """What a GPU machine without the encoder installed does: both steps read the saved table."""
    from DuPLUSLib.bundle import default_model_dir, load_bundle
    from DuPLUSLib.text import PromptEmbeddings
    from DuPLUSLib.training import prompt_codes
    from DuPLUSLib.training.loop import export_checkpoint

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although a prompt table was given")

    monkeypatch.setattr(prompt_codes, "TextEncoder", no_encoder)
    table = default_model_dir() / "prompt_embeddings.safetensors"
    config = tiny_config(toy, code="text", steps=2, checkpoint_every=1)
    train(config, tmp_path / "run", device="cpu", progress=False, prompt_table=table)
    exported = export_checkpoint(config, tmp_path / "run", tmp_path / "exported", prompt_table=table)
    saved = PromptEmbeddings.load(table)
    codes = load_bundle(exported).embeddings
    torch.testing.assert_close(codes.get(codes.texts), saved.get(codes.texts))
    finished = json.loads((tmp_path / "run" / "model" / "config.json").read_text(encoding="utf-8"))["training"]
    again = json.loads((exported / "config.json").read_text(encoding="utf-8"))["training"]
    logged = float((tmp_path / "run" / "metrics.csv").read_text(encoding="utf-8").splitlines()[-1].split(",")[-1])
    assert again["steps"] == finished["steps"] == 2 and again["seconds"] == logged  # a finished run keeps its time


# --------------------------------------------------------------------------------------- resume
def test_resume_continues_from_the_same_step(toy, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(toy, steps=4, checkpoint_every=2)
    train(config, run, device="cpu", progress=False)
    config.training.steps = 8
    seen: list[int] = []
    outcome = train(config, run, resume=True, device="cpu", progress=False,
                    on_step=lambda step, loss: seen.append(step))
    assert seen == [5, 6, 7, 8]  # no restart from step 1
    assert outcome.steps == 8
    assert read_metrics(run) == list(range(1, 9))  # the log continues, each step once
    assert json.loads((run / "checkpoint" / "state.json").read_text(encoding="utf-8"))["step"] == 8


def test_a_run_stopped_between_checkpoints_resumes_with_each_step_logged_once(toy, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(toy, steps=8, checkpoint_every=3)

    def stop_after_step_5(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt  # Ctrl+C: steps 4 and 5 are logged but not in the step-3 checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(config, run, device="cpu", progress=False, on_step=stop_after_step_5)
    train(config, run, resume=True, device="cpu", progress=False)
    assert read_metrics(run) == list(range(1, 9))
    with (run / "metrics.csv").open(encoding="utf-8") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    assert seconds == sorted(seconds)  # training time counts on across the resume


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(toy, tmp_path):
    from safetensors.torch import load_file

    config = tiny_config(toy, steps=6, checkpoint_every=3)
    train(config, tmp_path / "straight", device="cpu", progress=False)
    config.training.steps = 3
    train(config, tmp_path / "split", device="cpu", progress=False)
    config.training.steps = 6
    train(config, tmp_path / "split", resume=True, device="cpu", progress=False)
    straight = load_file(str(tmp_path / "straight" / "checkpoint" / "state.safetensors"))
    split = load_file(str(tmp_path / "split" / "checkpoint" / "state.safetensors"))
    for key in (k for k in straight if k.startswith("model.")):
        torch.testing.assert_close(split[key], straight[key], msg=key)


def test_export_every_leaves_a_loadable_bundle_when_a_run_is_stopped(toy, tmp_path):
    """A run killed from outside (a GPU lease ending) between checkpoints still has its latest model."""
    from DuPLUSLib.bundle import load_bundle

    run = tmp_path / "run"
    config = tiny_config(toy, steps=8, checkpoint_every=8, export_every=3)

    def stop_after_step_7(step: int, loss: float) -> None:
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, run, device="cpu", progress=False, on_step=stop_after_step_7)
    assert not (run / "checkpoint").exists() and not (run / "model.partial").exists()
    bundle = load_bundle(run / "model")  # verifies every file's sha256
    assert bundle.config.training["steps"] == 6 and bundle.config.training["seconds"] is None
    assert tiny_config(toy, steps=8, checkpoint_every=8).fingerprint() == config.fingerprint()


def test_resume_with_nothing_to_resume_is_refused(toy, tmp_path):
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(tiny_config(toy, steps=2), tmp_path / "fresh", resume=True, device="cpu", progress=False)


def test_a_run_folder_holding_a_different_run_is_refused(toy, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(toy, steps=2), run, device="cpu", progress=False)
    other = tiny_config(toy, steps=2, learning_rate=0.002)
    with pytest.raises(RunFolderError, match="holds a different run"):
        train(other, run, device="cpu", progress=False)
    with pytest.raises(RunFolderError, match="holds a different run"):
        train(other, run, resume=True, device="cpu", progress=False)


def test_the_same_run_without_resume_is_refused(toy, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(toy, steps=2), run, device="cpu", progress=False)
    with pytest.raises(RunFolderError, match="pass --resume"):
        train(tiny_config(toy, steps=4), run, device="cpu", progress=False)


@pytest.mark.skipif(os.name == "nt", reason="the test holds the lock with fcntl")
def test_a_run_folder_in_use_by_another_process_is_refused_until_it_ends(toy, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         "lock = open(sys.argv[1], 'a+')\n"
         "fcntl.flock(lock, fcntl.LOCK_EX)\n"
         "lock.write('pid 4242'); lock.flush(); print('locked', flush=True); time.sleep(120)",
         str(run / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=r"in use by another training run \(pid 4242\)"):
            train(tiny_config(toy, steps=2), run, device="cpu", progress=False)
        assert not (run / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(tiny_config(toy, steps=2), run, device="cpu", progress=False).steps == 2


def test_a_failed_run_releases_its_folder_even_while_its_traceback_is_kept(toy, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(toy, steps=2), run, device="cpu", progress=False)
    with pytest.raises(RunFolderError, match="holds a different run") as failure:
        train(tiny_config(toy, steps=2, learning_rate=0.002), run, device="cpu", progress=False)
    assert failure.value.__traceback__ is not None  # as a console keeps it in sys.last_traceback
    assert train(tiny_config(toy, steps=4), run, resume=True, device="cpu", progress=False).steps == 4


# ------------------------------------------------------------------------------------- configs
def config_dict(**changes) -> dict:
    values = {"name": "x", "datasets": [{"kind": "phantom", "cases": 1}]}
    values.update(changes)
    return values


@pytest.mark.parametrize(
    "values, message",
    [
        (config_dict(learning_rate=0.1), r"unknown key\(s\) in the config: learning_rate"),
        (config_dict(training={"stepz": 3}), r"unknown key\(s\) in training: stepz"),
        (config_dict(datasets=[{"kind": "phantom", "case": 3}]), r"unknown key\(s\) in datasets\[0\]: case"),
        (config_dict(prompts={"code": "morse"}), "prompts.code must be text or onehot"),
        (config_dict(network={"chanels": [8, 16]}), "network: unknown network setting"),
        (config_dict(datasets=[{"kind": "atlas"}]), "kind must be phantom, mni152, decathlon or synth"),
        ({"datasets": [{"kind": "phantom"}]}, "needs a 'name'"),
    ],
)
def test_unknown_or_invalid_config_keys_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingConfig.from_dict(values)


def test_a_yaml_config_with_a_typo_fails_on_load(tmp_path):
    from DuPLUSLib.training.config import load_config

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndatasets: [{kind: phantom}]\ntraining: {step: 10}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="step"):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("- name: x\n- datasets: []\n", "must be a mapping of settings"),
    ("just a sentence\n", "must be a mapping of settings"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not a text file"),
])
def test_a_config_file_that_is_not_a_mapping_of_settings_is_refused_by_name(tmp_path, text, message):
    from DuPLUSLib.training.config import load_config

    path = tmp_path / "odd.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(path)
    assert "odd.yaml" in str(refused.value)


@pytest.mark.parametrize("argv", [["train", "some.yaml", "--steps", "0"],
                                  ["finetune", "--data", "phantom:CT/abdomen:seeds=1-1", "-o", "x", "--steps", "-3"]])
def test_a_step_count_below_one_is_refused_not_ignored(argv, capsys):
    """``--steps 0`` once ran the config's full count (train) or crashed after saving (finetune)."""
    from DuPLUSLib.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_finetune_into_a_path_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    from DuPLUSLib.cli import main

    (tmp_path / "adapter").write_text("not a folder", encoding="utf-8")
    argv = ["finetune", "--data", "phantom:CT/abdomen:seeds=1-1", "-o", str(tmp_path / "adapter"),
            "--model", str(tmp_path / "no-model")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a file; -o names the folder" in err and "Traceback" not in err
    assert (tmp_path / "adapter").read_text(encoding="utf-8") == "not a folder"


# ------------------------------------------------------------------------- the shipped configs
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.mark.skipif(not EXPERIMENTS.is_dir(), reason="experiments/ not in this checkout")
def test_the_experiment_configs_are_valid_training_configs():
    import yaml

    from DuPLUSLib.training.config import load_config
    from DuPLUSLib.training.decathlon import load_mapping

    ablation = yaml.safe_load((EXPERIMENTS / "ablation.yaml").read_text(encoding="utf-8"))
    for arm in ablation["arms"].values():
        values = ablation["training_config"] | {"prompts": {"code": arm["code"]}}
        values["network"] = values["network"] | {"conditioning": arm["conditioning"]}
        TrainingConfig.from_dict(values)
    TrainingConfig.from_dict(yaml.safe_load((EXPERIMENTS / "new_centre.yaml").read_text(encoding="utf-8"))["base_training"])
    assert load_config(EXPERIMENTS / "decathlon_finetune.yaml").datasets[0].kind == "decathlon"
    assert load_mapping(EXPERIMENTS / "task03_liver_mapping.json").structures["liver"] == (1, 2)


CONTROLS = EXPERIMENTS.parent / "controls"


@pytest.mark.skipif(not CONTROLS.is_dir(), reason="experiments/ not in this checkout")
@pytest.mark.parametrize("ablation, option", [("version8-organ-resizes", "organ_resizes"),
                                              ("version8-strong-deformations", "strong_deformations")])
def test_an_ablation_differs_from_its_same_budget_control_by_its_one_option(ablation, option):
    """An ablation is judged against the control; any other difference would be credited to the option."""
    from DuPLUSLib.training.config import load_config

    control = load_config(CONTROLS / "version8-continued.yaml").to_dict()
    changed = load_config(CONTROLS / f"{ablation}.yaml").to_dict()
    switched = [i for i, dataset in enumerate(changed["datasets"]) if dataset[option]]
    assert switched and all(changed["datasets"][i]["kind"] == "synth" for i in switched)
    for i in switched:
        changed["datasets"][i][option] = False
    assert changed == control


@pytest.mark.skipif(not CONTROLS.is_dir(), reason="experiments/ not in this checkout")
def test_the_seed_replicate_differs_from_the_control_by_its_seed_alone():
    """The replicate measures chance alone, so nothing but the seed may differ."""
    from DuPLUSLib.training.config import load_config

    control = load_config(CONTROLS / "version8-continued.yaml").to_dict()
    replicate = load_config(CONTROLS / "version8-continued-seed5.yaml").to_dict()
    assert replicate["seed"] != control["seed"]
    replicate["seed"] = control["seed"]
    assert replicate == control


# ----------------------------------------------------------------------------------- warm start
def test_initial_model_starts_a_run_from_that_models_weights(trained, toy, tmp_path):
    from DuPLUSLib.bundle import load_bundle

    outcome, _, _ = trained
    config = tiny_config(toy, name="warm", steps=1, learning_rate=1e-12, ema_decay=0.0)
    config.initial_model = str(outcome.model_dir)
    warm = train(config, tmp_path / "warm", device="cpu", progress=False)
    source = load_bundle(outcome.model_dir).network.state_dict()
    continued = load_bundle(warm.model_dir).network.state_dict()
    assert all(torch.allclose(source[k].float(), continued[k].float(), atol=1e-3) for k in source)


def test_initial_model_of_another_architecture_is_refused(trained, toy, tmp_path):
    outcome, _, _ = trained
    config = tiny_config(toy, name="other")
    config.network = {**TINY_NETWORK, "channels": [8, 8]}
    config.initial_model = str(outcome.model_dir)
    with pytest.raises(RunFolderError, match="another network configuration"):
        train(config, tmp_path / "other", device="cpu", progress=False)


def test_a_missing_initial_model_is_refused_with_the_fix(toy, tmp_path):
    """The default recipe warm-starts from preview 3, which a fresh clone must train first."""
    config = tiny_config(toy, name="missing")
    config.initial_model = str(tmp_path / "runs" / "preview3" / "model")
    with pytest.raises(RunFolderError, match="does not exist; train that model first"):
        train(config, tmp_path / "missing", device="cpu", progress=False)
    assert not (tmp_path / "missing" / "model").exists()
