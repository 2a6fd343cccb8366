"""Keeping a structure's largest connected part: the function on hand-made masks, and a model that
names the structures in its inference settings, end to end through a saved bundle."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine_fixtures import bright_region_network, bundle_of, one_thread  # noqa: F401
from DuPLUSLib.bundle import load_bundle
from DuPLUSLib.errors import ModelBundleError
from DuPLUSLib.imageio import VolumeImage
from DuPLUSLib.inference import Segmenter
from DuPLUSLib.postprocessing import DroppedParts, dropped_parts_warning, keep_largest_part

pytestmark = pytest.mark.usefixtures("one_thread")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The mask's largest 26-connected part, as inference keeps it."""
    return keep_largest_part(mask.astype(np.float32), 0.5, voxel_ml=1.0)[0] >= 0.5


def two_blobs(shape=(20, 20, 20)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[2:10, 2:10, 2:10] = True  # 512 voxels
    mask[14:17, 14:17, 14:17] = True  # 27 voxels, apart
    return mask


def test_the_largest_part_is_kept_and_parts_touching_at_a_corner_count_as_one():
    mask = two_blobs()
    assert largest_component(mask).sum() == 512
    mask[10, 10, 10] = True  # touches the big cube at its corner only
    assert largest_component(mask).sum() == 513
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()


def test_only_the_largest_part_reaches_the_threshold_after_linear_resampling():
    """Parts that are not 26-connected share no 2x2x2 cell, so zeroing the smaller ones on the model
    grid leaves the largest exactly as a resampling to a finer grid finds it, and nothing else."""
    from DuPLUSLib.preprocessing import resample_onto

    probability = np.where(two_blobs(), 0.9, 0.3).astype(np.float32)
    kept, dropped = keep_largest_part(probability, 0.5, voxel_ml=0.008)
    assert dropped == DroppedParts(parts=1, volume_ml=27 * 0.008, kept_ml=512 * 0.008)
    assert kept.dtype == np.float32 and kept[15, 15, 15] == 0 and kept[5, 5, 5] == np.float32(0.9)
    coarse = VolumeImage(probability, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    fine = VolumeImage(np.zeros((39, 39, 39), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    before = resample_onto(coarse, fine, "linear", 0.0) >= 0.5
    after = resample_onto(coarse.with_array(kept), fine, "linear", 0.0) >= 0.5
    assert np.array_equal(after, largest_component(before)) and after.sum() < before.sum()
    one_part = probability[:12, :12, :12]
    assert keep_largest_part(one_part, 0.5, voxel_ml=0.008) == (one_part, DroppedParts())


def image_with_two_bright_spheres(small_radius: float = 2.5) -> VolumeImage:
    """A 64 mm cube of water with a 12 mm and a 5 mm (2 x ``small_radius``) radius bright sphere, far apart."""
    k, j, i = np.meshgrid(*(np.arange(32),) * 3, indexing="ij")
    big = (k - 10) ** 2 + (j - 10) ** 2 + (i - 10) ** 2 <= 6 ** 2
    small = (k - 23) ** 2 + (j - 23) ** 2 + (i - 23) ** 2 <= small_radius ** 2
    array = np.where(big | small, 400.0, 0.0) + np.random.default_rng(0).normal(0, 5, big.shape)
    return VolumeImage(array.astype(np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))


def test_a_model_keeps_the_largest_part_only_of_the_structures_its_settings_name(tmp_path):
    """The hand-set network marks both bright spheres for any prompt; the saved bundle names the
    liver, so the liver keeps the big sphere and the spleen, not named, keeps both."""
    bundle = bundle_of(bright_region_network(), spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32),
                       weights_dtype="float32")
    bundle.config.inference = dataclasses.replace(bundle.config.inference, largest_component=("liver",))
    folder = bundle.save(tmp_path / "model")
    segmenter = Segmenter(load_bundle(folder), device="cpu")
    image = image_with_two_bright_spheres()
    result = segmenter.segment(image, segmenter.parse_prompts(["CT/abdomen/liver", "CT/abdomen/spleen"]))
    liver, spleen = result.segments
    assert 0 < liver.voxel_count() < spleen.voxel_count()
    assert np.array_equal(liver.mask, largest_component(spleen.mask))
    liver_entry, spleen_entry = result.report()["segments"]
    assert liver_entry["largest_part_only"] and liver_entry["dropped_parts"] == 1
    small_sphere_ml = (spleen.voxel_count() - liver.voxel_count()) * 8 / 1000  # 2 mm voxels, the model grid too
    assert liver_entry["dropped_ml"] == pytest.approx(small_sphere_ml)
    assert not liver_entry["check"]  # the small sphere is a fraction of the big one: nothing to look at
    assert not spleen_entry["largest_part_only"] and spleen_entry["dropped_ml"] == 0.0

    from DuPLUSLib.slicer.segment_logic import describe_segments

    twins = segmenter.segment(image_with_two_bright_spheres(small_radius=5.5), segmenter.parse_prompts(["CT/abdomen/liver"]))
    report = twins.report()
    assert report["segments"][0]["check"]  # the sphere dropped is nearly the one kept: which is the liver?
    assert not any(line.startswith("Check") for line in describe_segments(result.report()))
    assert [line for line in describe_segments(report) if line.startswith("Check liver: only its largest part is kept")]

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["inference"]["largest_component"] = ["livr"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelBundleError, match="largest_component names no structure of the ontology: livr"):
        load_bundle(folder)


def test_the_choice_is_made_per_structure_on_validation_data(tmp_path):
    """``experiments/choose_postprocessing.py`` with the hand-set network, which finds both spheres:
    where the reference is the big sphere alone (liver) keeping the largest part helps and the liver
    is chosen; where the reference is both spheres (spleen) it hurts and the spleen is not. Where the
    dropped sphere is nearly the kept one's size, the warning fires: rightly where both spheres are the
    reference (the kidney's cases), needlessly where the kept one is (the stomach's)."""
    import importlib.util
    from pathlib import Path

    from DuPLUSLib.training.decathlon import write_decathlon_dataset

    image = image_with_two_bright_spheres()
    both = image.array > 200
    big = largest_component(both)
    twins = image_with_two_bright_spheres(small_radius=5.5)
    for name, key, case, mask in (("big", "liver", image, big), ("both", "spleen", image, both),
                                  ("twins", "stomach", twins, largest_component(twins.array > 200)),
                                  ("both_twins", "kidney_left", twins, twins.array > 200)):
        triples = [(f"{name}_{index}", case, mask.astype(np.uint8)) for index in range(3)]
        write_decathlon_dataset(tmp_path / name, triples, {"modality": "CT", "region": "abdomen", "labels": {"1": key}})
    bundle = bundle_of(bright_region_network(), spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32),
                       weights_dtype="float32")
    model = bundle.save(tmp_path / "model")
    script = Path(__file__).resolve().parents[2] / "experiments" / "choose_postprocessing.py"
    spec = importlib.util.spec_from_file_location("choose_postprocessing", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "choice.json"
    assert module.main(["--model", str(model), "--data", str(tmp_path / "big"), "--data", str(tmp_path / "both"),
                        "--data", str(tmp_path / "twins"), "--data", str(tmp_path / "both_twins"),
                        "-o", str(output)]) == 0
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["largest_component"] == ["liver", "stomach"]
    assert report["structures"]["liver"]["dice_largest_part"] > report["structures"]["liver"]["dice_as_found"]
    assert report["structures"]["spleen"]["cases"] == 3 and not report["structures"]["spleen"]["chosen"]
    # costly: the kidney's cases (the spleen's small sphere costs 0.04); the warning fires on them and the stomach's
    assert report["warning"] == {"structure_cases": 12, "fired": 6, "costly": 3, "fired_on_costly": 3,
                                 "costly_dice_loss": 0.05}


def test_the_choice_joins_a_training_config_without_changing_its_run():
    """Chosen after training, the list goes into the config's inference section; the run folder
    must still resume and export, so it is not part of the fingerprint."""
    from DuPLUSLib.training.config import TrainingConfig

    base = {"name": "r", "datasets": [{"kind": "phantom"}], "inference": {"spacing": [4, 4, 4]}}
    chosen = base | {"inference": {"spacing": [4, 4, 4], "largest_component": ["liver"]}}
    assert TrainingConfig.from_dict(base).fingerprint() == TrainingConfig.from_dict(chosen).fingerprint()
    other_grid = base | {"inference": {"spacing": [3, 3, 3]}}
    assert TrainingConfig.from_dict(base).fingerprint() != TrainingConfig.from_dict(other_grid).fingerprint()


def test_a_misnamed_or_mistyped_structure_list_is_refused_before_training():
    from DuPLUSLib.training.config import ConfigError, TrainingConfig

    base = {"name": "r", "datasets": [{"kind": "phantom"}]}
    with pytest.raises(ConfigError, match="no structure of the ontology is called livr"):
        TrainingConfig.from_dict(base | {"inference": {"largest_component": ["livr"]}})
    with pytest.raises(ConfigError, match="must be a list of structure keys, not 'liver'"):
        TrainingConfig.from_dict(base | {"inference": {"largest_component": "liver"}})


def test_dropped_parts_large_beside_the_kept_one_are_worth_a_look():
    """A false finding can outgrow a small true organ; when what was removed is at least half what
    was kept, the user is told to check which part was kept, by name and with the volumes."""
    assert not DroppedParts().worth_checking
    assert not DroppedParts(parts=2, volume_ml=4.9, kept_ml=10.0).worth_checking
    assert DroppedParts(parts=2, volume_ml=5.0, kept_ml=10.0).worth_checking
    entry = {"name": "spleen", "volume_ml": 40.0, "dropped_parts": 2, "dropped_ml": 55.5, "check": True}
    warning = dropped_parts_warning(entry)
    assert warning.startswith("spleen: only its largest part is kept (40.0 ml); 2 other parts of 55.5 ml")
    assert dropped_parts_warning(entry | {"check": False}) is None


def test_duplus_segment_says_which_structure_to_check_for_one_case_and_for_each_case_of_a_batch(
        tmp_path, capsys, keep_signal_handlers):
    """The command line prints the warning under its table for one case, and under the bar for each
    case of a batch; the report holds the same fields."""
    from DuPLUSLib.cli import main
    from DuPLUSLib.imageio import write_image

    bundle = bundle_of(bright_region_network(), spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32),
                       weights_dtype="float32")
    bundle.config.inference = dataclasses.replace(bundle.config.inference, largest_component=("liver",))
    model = bundle.save(tmp_path / "model")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    write_image(image_with_two_bright_spheres(small_radius=5.5), cohort / "twins.nrrd")
    write_image(image_with_two_bright_spheres(), cohort / "apart.nrrd")
    common = ["-p", "CT/abdomen/liver", "--model", str(model), "--device", "cpu"]
    assert main(["segment", str(cohort / "twins.nrrd"), "-o", str(tmp_path / "twins.seg.nrrd"),
                 "--report", str(tmp_path / "twins.json"), *common]) == 0
    assert "check:   liver: only its largest part is kept" in capsys.readouterr().out
    assert json.loads((tmp_path / "twins.json").read_text(encoding="utf-8"))["segments"][0]["check"] is True
    assert main(["segment", str(cohort), "-o", str(tmp_path / "batch"), *common]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if ": check: " in line]
    assert len(lines) == 1 and lines[0].startswith("twins: check: liver: only its largest part is kept")
