"""``duplus evaluate``: metrics that agree with MONAI and with hand computation, the empty-mask
rule, aggregation per dataset and modality, data specs, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from DuPLUSLib.imageio import VolumeImage
from DuPLUSLib.training.evaluate import (
    DataSpecError,
    EvaluationCase,
    evaluate_cases,
    markdown_report,
    parse_data_spec,
    structure_metrics,
)

torch.set_num_threads(1)


def cube(shape=(12, 12, 12), start=(3, 3, 3), size=4) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


# ---------------------------------------------------------------------------------------- metrics
def test_dice_of_shifted_cubes_matches_the_hand_computed_value():
    reference, prediction = cube(), cube(start=(3, 3, 4))  # shifted one voxel along i
    # overlap 4 x 4 x 3 = 48 voxels of 64 each: Dice = 2 * 48 / 128
    assert structure_metrics(prediction, reference, (1, 1, 1))["dice"] == pytest.approx(0.75)


def test_dice_and_hd95_agree_with_monai_on_hand_made_masks():
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    rng = np.random.default_rng(0)
    reference = cube(size=5)
    prediction = reference ^ (rng.random(reference.shape) < 0.05)
    spacing = (0.8, 1.2, 3.0)  # (i, j, k)
    ours = structure_metrics(prediction, reference, spacing)
    p = torch.from_numpy(prediction)[None, None].float()
    r = torch.from_numpy(reference)[None, None].float()
    expected_dice = DiceMetric(include_background=True, reduction="none")(p, r).item()
    expected_hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                             spacing=[3.0, 1.2, 0.8]).item()
    assert ours["dice"] == pytest.approx(expected_dice)
    assert ours["hd95_mm"] == pytest.approx(expected_hd)


def test_hd95_is_in_millimetres_along_the_right_axis():
    reference = cube()
    along_i, along_k = cube(start=(3, 3, 4)), cube(start=(4, 3, 3))
    spacing = (2.0, 1.0, 3.0)  # (i, j, k) mm; arrays are [k, j, i]
    assert structure_metrics(along_i, reference, spacing)["hd95_mm"] == pytest.approx(2.0)
    assert structure_metrics(along_k, reference, spacing)["hd95_mm"] == pytest.approx(3.0)


def test_both_masks_empty_is_a_perfect_dice_without_a_distance():
    empty = np.zeros((6, 6, 6), dtype=bool)
    assert structure_metrics(empty, empty, (1, 1, 1)) == {
        "dice": 1.0, "hd95_mm": None, "predicted_voxels": 0, "reference_voxels": 0}


@pytest.mark.parametrize("which", ["prediction", "reference"])
def test_one_empty_mask_is_dice_zero_and_an_undefined_distance(which):
    empty, full = np.zeros((12, 12, 12), dtype=bool), cube()
    prediction, reference = (empty, full) if which == "prediction" else (full, empty)
    result = structure_metrics(prediction, reference, (1, 1, 1))
    assert result["dice"] == 0.0 and result["hd95_mm"] is None


# ------------------------------------------------------------------------------------ aggregation
class StubSegmenter:
    """Returns fixed masks per structure, so the bookkeeping of evaluate_cases is checked alone."""

    def __init__(self, predictions: dict[str, np.ndarray]):
        self.predictions = predictions
        self.bundle = SimpleNamespace(config=SimpleNamespace(name="stub", files={}, training={}), path=None)

    def segment(self, image, prompts):
        return SimpleNamespace(segments=[SimpleNamespace(mask=self.predictions[p.structure]) for p in prompts],
                               timings={"inference": 0.0})


def case(name: str, dataset: str, modality: str, region: str, labels: dict) -> EvaluationCase:
    image = VolumeImage(np.zeros((12, 12, 12), dtype=np.int16), (1.0, 1.0, 1.0))
    return EvaluationCase(name, dataset, modality, region, image, labels)


def test_reports_aggregate_per_structure_and_per_dataset_and_modality():
    empty = np.zeros((12, 12, 12), dtype=bool)
    segmenter = StubSegmenter({"liver": cube(start=(3, 3, 4)), "liver_tumour": empty, "brain": cube()})
    cases = [
        case("a", "toy", "CT", "abdomen", {"liver": cube(), "liver_tumour": empty}),
        case("b", "toy", "CT", "abdomen", {"liver": cube(), "liver_tumour": cube()}),
        case("c", "mri", "MRI", "brain", {"brain": cube()}),
    ]
    report = evaluate_cases(segmenter, cases)
    rows = {(r["dataset"], r["structure"]): r for r in report["by_structure"]}
    assert rows[("toy", "liver")]["dice_mean"] == pytest.approx(0.75)
    tumour = rows[("toy", "liver_tumour")]  # one true negative (1.0), one miss (0.0)
    assert tumour["dice_mean"] == pytest.approx(0.5)
    assert tumour["hd95_mean_mm"] is None and tumour["hd95_undefined"] == 2
    datasets = {(r["dataset"], r["modality"]): r for r in report["by_dataset"]}
    assert datasets[("toy", "CT")]["cases"] == 2 and datasets[("mri", "MRI")]["dice_mean"] == 1.0
    assert report["overall"]["mean_structure_dice"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert [c["name"] for c in report["cases"]] == ["a", "b", "c"]
    json.dumps(report, allow_nan=False)  # null, never NaN or Infinity, in the JSON


def test_the_markdown_report_has_a_row_per_structure_and_dataset():
    segmenter = StubSegmenter({"liver": cube()})
    report = evaluate_cases(segmenter, [case("a", "toy", "CT", "abdomen", {"liver": cube()})])
    text = markdown_report(report, "Held-out")
    assert "## Held-out" in text
    assert "| toy | CT | liver | 1 | 1.000 |" in text
    assert "| toy | CT | 1 | 1.000 |" in text


# ------------------------------------------------------------------------------------- data specs
def test_phantom_specs_name_contexts_seeds_spacing_and_a_domain_shift():
    source = parse_data_spec("phantom:CT/abdomen,MRI/brain:seeds=1000-1002:spacing=3:noise=0.2")
    assert source.kind == "phantom" and source.contexts == [("CT", "abdomen"), ("MRI", "brain")]
    assert source.seeds == [1000, 1001, 1002] and source.spacing == 3.0
    assert source.domain_shift == {"noise": 0.2}
    training = source.dataset_spec()
    assert (training.cases, training.seed_offset, training.contexts) == (3, 1000, ["CT/abdomen", "MRI/brain"])


def test_mni152_specs_take_seeds():
    assert parse_data_spec("mni152:seeds=3,5").seeds == [3, 5]


@pytest.mark.parametrize(
    "text, message",
    [
        ("phantom:CT/abdomen", "names no seeds"),
        ("phantom:seeds=1-2", "phantom:MODALITY/region"),
        ("phantom:CT/nowhere:seeds=1-2", "not a known region"),
        ("phantom:CT/abdomen:seeds=a-b", "seeds must look like"),
        ("/no/such/folder", "neither a dataset folder"),
    ],
)
def test_bad_data_specs_are_refused(text, message):
    with pytest.raises(DataSpecError, match=message):
        parse_data_spec(text)


def test_a_decathlon_folder_needs_a_mapping(tmp_path):
    with pytest.raises(DataSpecError, match="no mapping"):
        parse_data_spec(str(tmp_path))


# ---------------------------------------------------------------------------------- the command
def tiny_bundle(folder: Path, spacing: float = 3.0):
    """An untrained, tiny, one-hot-coded model: enough to run the real Segmenter in a second."""
    from DuPLUSLib.bundle import BundleConfig, InferenceSettings, ModelBundle
    from DuPLUSLib.network import DuPLUSNet, NetworkConfig
    from DuPLUSLib.ontology import load_ontology
    from DuPLUSLib.training.prompt_codes import build_prompt_codes

    torch.manual_seed(0)
    ontology = load_ontology()
    codes, entry = build_prompt_codes(ontology, "onehot")
    network_config = NetworkConfig(channels=(8, 16), encoder_blocks=1, decoder_blocks=1, conditioned_decoder_stages=1,
                                   text_dim=codes.dim, head_embed=16, condition_hidden=16, head_channels=4)
    config = BundleConfig("tiny", network_config, InferenceSettings(spacing=(spacing,) * 3, patch_size=(16, 16, 16), overlap=0.25),
                          ontology.version, text_encoder=entry, weights_dtype="float32")
    return ModelBundle(None, config, DuPLUSNet(network_config).eval(), codes, ontology).save(folder)


def test_duplus_evaluate_writes_json_and_markdown(tmp_path):
    from DuPLUSLib.cli import main
    from DuPLUSLib.training.decathlon import write_toy_dataset

    model = tiny_bundle(tmp_path / "model")
    data = write_toy_dataset(tmp_path / "toy", cases=2)
    code = main(["evaluate", "--model", str(model), "--data", str(data), "-o", str(tmp_path / "report.json"),
                 "--markdown", str(tmp_path / "report.md"), "--device", "cpu"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert {r["structure"] for r in report["by_structure"]} == {"liver", "liver_tumour"}
    assert report["overall"]["cases"] == 2 and report["model"]["name"] == "tiny"
    assert "| toy | CT | liver |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_duplus_evaluate_reports_a_bad_dataset_as_a_clear_error(tmp_path, capsys):
    from DuPLUSLib.cli import main

    model = tiny_bundle(tmp_path / "model")
    code = main(["evaluate", "--model", str(model), "--data", "phantom:CT/abdomen", "-o", str(tmp_path / "r.json")])
    assert code == 2
    assert "names no seeds" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- phantoms
def test_held_out_phantoms_are_evaluated_at_a_coarse_spacing(tmp_path):
    from DuPLUSLib.bundle import load_bundle
    from DuPLUSLib.training.evaluate import evaluate_model

    bundle = load_bundle(tiny_bundle(tmp_path / "model", spacing=8.0))
    report = evaluate_model(bundle, [parse_data_spec("phantom:CT/abdomen:seeds=7:spacing=8")], device="cpu")
    assert report["overall"]["cases"] == 1
    assert {"liver", "spleen", "kidney_left"} <= {r["structure"] for r in report["by_structure"]}
    assert report["data"] == ["phantom:CT/abdomen:seeds=7-7:spacing=8"]


def test_a_domain_shift_changes_the_image_and_keeps_the_anatomy():
    plain = next(parse_data_spec("phantom:CT/abdomen:seeds=7:spacing=8").cases())
    shifted = next(parse_data_spec("phantom:CT/abdomen:seeds=7:spacing=8:intensity_offset=100").cases())
    np.testing.assert_array_equal(shifted.labels["liver"], plain.labels["liver"])
    liver = plain.labels["liver"]
    assert shifted.image.array[liver].mean() > plain.image.array[liver].mean() + 50


def test_mni152_specs_yield_the_real_brain_with_its_three_labels():
    case = next(parse_data_spec("mni152:seeds=0").cases())
    assert (case.modality, case.region) == ("MRI", "brain")
    assert set(case.labels) == {"brain", "grey_matter", "white_matter"}
