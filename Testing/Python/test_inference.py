"""From a volume and prompts to masks on the input grid: geometry, batching of prompts, precision,
cancelling, resource limits, refused input and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine_fixtures import (  # noqa: F401
    bundle_of,
    dice,
    one_thread,
    oblique_direction,
    random_network,
    save_bright_region_bundle,
    save_random_bundle,
    small_network_config,
    sphere_volume,
)
from DuPLUSLib.bundle import default_model_dir, load_bundle
from DuPLUSLib.errors import (
    CancelledError,
    DeviceError,
    InputImageError,
    OutputPathError,
    ResourceLimitError,
    UnknownPromptError,
)
from DuPLUSLib.imageio import read_segmentation, write_image
from DuPLUSLib.inference import Segmenter, segment_file
from DuPLUSLib.network import DuPLUSNet
from DuPLUSLib.ontology import load_ontology
from DuPLUSLib.preprocessing import resample_to_spacing

pytestmark = pytest.mark.usefixtures("one_thread")
ONTOLOGY = load_ontology()
ABDOMEN = ONTOLOGY.parse_many(["CT/abdomen/liver", "CT/abdomen/spleen", "CT/abdomen/pancreas"])


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return save_random_bundle(tmp_path_factory.mktemp("models") / "random")


@pytest.fixture(scope="module")
def bright_model(tmp_path_factory):
    return save_bright_region_bundle(tmp_path_factory.mktemp("models") / "bright")


@pytest.fixture
def random_segmenter(random_model):
    return Segmenter(load_bundle(random_model), device="cpu", precision="fp32")


@pytest.fixture
def bright_segmenter(bright_model):
    return Segmenter(load_bundle(bright_model), device="cpu", precision="fp32")


def off_centre_sphere(**options):
    """An oblique, flipped, anisotropic CT volume with a bright sphere away from its centre, so that a
    flipped or shifted result cannot match by symmetry."""
    return sphere_volume(shape_ijk=(40, 36, 16), centre_ijk=(12, 22, 7), radius_mm=7.0, **options)


def centroid_lps(image, mask) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    ijk = np.stack([i, j, k, np.ones_like(i)]).astype(float)
    return (image.ijk_to_lps @ ijk)[:3].mean(axis=1)


# ---------------------------------------------------------------------------------- geometry
def test_masks_lie_on_the_input_grid_of_an_oblique_flipped_image(bright_segmenter):
    image, truth = off_centre_sphere()
    assert not np.allclose(image.direction, np.eye(3))
    result = bright_segmenter.segment(image, ONTOLOGY.parse("CT/abdomen/liver"))
    mask = result.segments[0].mask
    assert mask.shape == image.array.shape and mask.dtype == bool
    assert dice(mask, truth) > 0.85
    np.testing.assert_allclose(centroid_lps(image, mask), centroid_lps(image, truth), atol=1.0)


def test_volume_smaller_than_one_window_is_padded_and_cropped_back(bright_segmenter):
    # What the window sees past the scan is the volume's minimum (air); the hand-set network
    # thresholds a z-score over its whole window, so the sphere here sits in air as well.
    image, truth = sphere_volume(shape_ijk=(6, 5, 3), spacing=(2.0, 2.0, 2.0), radius_mm=3.0, direction=np.eye(3),
                                 background=-1000.0)
    mask = bright_segmenter.segment(image, ONTOLOGY.parse("CT/abdomen/liver")).segments[0].mask
    assert mask.shape == (3, 5, 6)
    assert dice(mask, truth) > 0.85


def test_written_segmentation_has_the_input_geometry(bright_model, tmp_path):
    image, truth = off_centre_sphere()
    write_image(image, tmp_path / "ct.nii.gz")
    segment_file(tmp_path / "ct.nii.gz", ["CT/abdomen/liver"], tmp_path / "out.seg.nrrd", model=bright_model, device="cpu")
    geometry, masks = read_segmentation(tmp_path / "out.seg.nrrd", ONTOLOGY)
    assert geometry.same_geometry(image, tolerance=1e-5)
    assert dice(masks["liver"], truth) > 0.85


# ---------------------------------------------------------------------------------- prompts
def test_several_prompts_in_one_pass_give_the_masks_of_one_at_a_time(random_segmenter):
    image, _ = off_centre_sphere()
    together = random_segmenter.segment(image, ABDOMEN)
    assert any(s.mask.any() for s in together.segments)
    for prompt, segment in zip(ABDOMEN, together.segments):
        alone = random_segmenter.segment(image, [prompt]).segments[0]
        np.testing.assert_array_equal(segment.mask, alone.mask)


def test_prompts_of_two_contexts_are_each_segmented_in_their_own_context(random_segmenter):
    image, _ = off_centre_sphere()
    prompts = ONTOLOGY.parse_many(["CT/abdomen/liver", "CT/thorax/heart", "CT/abdomen/spleen"])
    result = random_segmenter.segment(image, prompts)
    assert [s.structure.key for s in result.segments] == ["liver", "heart", "spleen"]
    heart_alone = random_segmenter.segment(image, ONTOLOGY.parse("CT/thorax/heart")).segments[0]
    np.testing.assert_array_equal(result.segments[1].mask, heart_alone.mask)


def test_the_same_structure_in_another_context_gives_another_result(random_segmenter):
    image, _ = off_centre_sphere()
    thorax = random_segmenter.segment(image, ONTOLOGY.parse("CT/thorax/aorta"), keep_probabilities=True)
    abdomen = random_segmenter.segment(image, ONTOLOGY.parse("CT/abdomen/aorta"), keep_probabilities=True)
    assert not np.allclose(thorax.probabilities["CT/thorax/aorta"], abdomen.probabilities["CT/abdomen/aorta"])


@pytest.mark.parametrize("prompt", ["MRI/brain/white_matter", "US/pelvis/prostate"])
def test_mri_and_ultrasound_results_do_not_depend_on_the_scanners_intensity_scale(random_segmenter, prompt):
    image, _ = off_centre_sphere(background=40.0, foreground=900.0, noise=20.0, dtype=np.float32)
    brighter = image.with_array(image.array * 3.0)
    prompts = ONTOLOGY.parse(prompt)
    first = random_segmenter.segment(image, prompts).segments[0].mask
    second = random_segmenter.segment(brighter, prompts).segments[0].mask
    assert first.any()
    assert dice(first, second) > 0.99


def test_ct_results_follow_hounsfield_units(random_segmenter):
    image, _ = off_centre_sphere(dtype=np.float32)
    prompts = ONTOLOGY.parse("CT/abdomen/liver")
    first = random_segmenter.segment(image, prompts, keep_probabilities=True).probabilities["CT/abdomen/liver"]
    second = random_segmenter.segment(image.with_array(image.array * 3.0), prompts, keep_probabilities=True)
    assert not np.allclose(first, second.probabilities["CT/abdomen/liver"])


def test_no_prompt_is_refused(random_segmenter):
    image, _ = off_centre_sphere()
    with pytest.raises(UnknownPromptError, match="no prompt"):
        random_segmenter.segment(image, [])


def test_a_modality_the_model_has_no_stem_for_is_refused():
    config = small_network_config()
    config.modalities = ("CT",)
    segmenter = Segmenter(bundle_of(DuPLUSNet(config)), device="cpu")
    with pytest.raises(UnknownPromptError, match="no MRI input"):
        segmenter.parse_prompts(["MRI/brain/white_matter"])


# ------------------------------------------------------------------------------- precision
def test_bfloat16_masks_agree_with_float32_masks(bright_model):
    image, truth = off_centre_sphere()
    prompts = ONTOLOGY.parse("CT/abdomen/liver")
    bf16 = Segmenter(load_bundle(bright_model), device="cpu", precision="bf16")
    fp32 = Segmenter(load_bundle(bright_model), device="cpu", precision="fp32")
    assert bf16.autocast == torch.bfloat16 and fp32.autocast is None
    reduced, full = bf16.segment(image, prompts).segments[0], fp32.segment(image, prompts).segments[0]
    assert full.mask.sum() > 100
    assert dice(reduced.mask, full.mask) > 0.97


def test_unknown_precision_is_refused(random_model):
    with pytest.raises(ValueError, match="precision"):
        Segmenter(load_bundle(random_model), device="cpu", precision="fp8")


# ----------------------------------------------------------------------- cancel and limits
def test_cancel_stops_the_run_with_cancelled_error(random_segmenter):
    image, _ = off_centre_sphere()
    with pytest.raises(CancelledError):
        random_segmenter.segment(image, ABDOMEN, cancel=lambda: True)


def test_cancel_is_polled_between_windows(random_segmenter):
    image, _ = sphere_volume(shape_ijk=(64, 64, 32), spacing=(1.5, 1.5, 3.0))  # several windows wide
    windows = []

    def progress(stage, fraction, message):
        if stage == "inference":
            windows.append(fraction)

    with pytest.raises(CancelledError):
        random_segmenter.segment(image, ABDOMEN, progress=progress, cancel=lambda: len(windows) >= 2)
    assert len(windows) == 2


def test_cancelled_segment_file_writes_nothing(random_model, tmp_path):
    image, _ = off_centre_sphere()
    write_image(image, tmp_path / "ct.nrrd")
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(CancelledError):
        segment_file(tmp_path / "ct.nrrd", ["CT/abdomen/liver"], tmp_path / "out.seg.nrrd", model=random_model,
                     device="cpu", report=tmp_path / "out.json", preview=tmp_path / "out.png", cancel=lambda: True)
    assert {p.name for p in tmp_path.iterdir()} == before


def test_volume_too_large_for_the_memory_limit_is_refused_with_advice(random_model):
    image, _ = off_centre_sphere()
    segmenter = Segmenter(load_bundle(random_model), device="cpu", memory_limit_bytes=64 * 1024)
    with pytest.raises(ResourceLimitError, match="crop the volume") as caught:
        segmenter.segment(image, ABDOMEN)
    assert "fewer structures" in str(caught.value)


def test_kept_probability_maps_count_in_the_memory_check(random_model):
    """A map and a mask per structure on the input grid: a limit that fits the run without them
    refuses the run with them, and says what to drop."""
    image, _ = off_centre_sphere()
    bundle = load_bundle(random_model)
    prompts = Segmenter(bundle, device="cpu").parse_prompts(ABDOMEN)
    model_voxels = resample_to_spacing(image, bundle.config.inference.spacing).array.size
    without = 4 * (model_voxels * (2 * len(prompts) + 3) + image.array.size * 3)
    limit = int((without + 2 * image.array.size * len(prompts)) / 0.8)  # room for less than the maps
    segmenter = Segmenter(bundle, device="cpu", memory_limit_bytes=limit)
    segmenter.segment(image, prompts)
    with pytest.raises(ResourceLimitError, match="write no probability maps"):
        segmenter.segment(image, prompts, keep_probabilities=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_is_a_device_error(random_model):
    with pytest.raises(DeviceError, match="--device cpu"):
        Segmenter(load_bundle(random_model), device="cuda")


def test_unknown_device_is_a_device_error(random_model):
    with pytest.raises(DeviceError, match="auto, cpu, cuda or mps"):
        Segmenter(load_bundle(random_model), device="tpu")


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused(random_segmenter, bad_value):
    image, _ = off_centre_sphere(dtype=np.float32)
    image.array[3, 4, 5] = bad_value
    with pytest.raises(InputImageError, match="NaN or infinite"):
        random_segmenter.segment(image, ABDOMEN)


def test_a_volume_with_sheared_axes_is_refused_naming_the_tilt(random_segmenter):
    image, _ = off_centre_sphere()
    tilt = np.radians(12.0)
    image.direction = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, np.sin(tilt)], [0.0, 0.0, np.cos(tilt)]])
    with pytest.raises(InputImageError, match=r"not perpendicular \(sheared by 12.0 degrees"):
        random_segmenter.segment(image, ABDOMEN)
    image.direction = np.diag([2.0, 1.0, 1.0])
    with pytest.raises(InputImageError, match="not unit vectors"):
        random_segmenter.segment(image, ABDOMEN)


def test_constant_volume_is_refused(random_segmenter):
    image, _ = off_centre_sphere()
    with pytest.raises(InputImageError, match="constant"):
        random_segmenter.segment(image.with_array(np.full_like(image.array, -1000)), ABDOMEN)


def test_empty_volume_is_refused(random_segmenter):
    image, _ = off_centre_sphere()
    empty = type(image)(array=np.zeros((0, 4, 4), dtype=np.int16), spacing=image.spacing)
    with pytest.raises(InputImageError, match="empty"):
        random_segmenter.segment(empty, ABDOMEN)


def test_a_typo_in_a_prompt_fails_before_the_image_is_read(random_model, tmp_path):
    with pytest.raises(UnknownPromptError, match="livr"):
        segment_file(tmp_path / "not-read.nrrd", ["CT/abdomen/livr"], tmp_path / "out.seg.nrrd", model=random_model)


def test_existing_output_fails_before_the_work_starts(random_model, tmp_path):
    (tmp_path / "out.seg.nrrd").write_text("previous result", encoding="utf-8")
    with pytest.raises(OutputPathError, match="already exists"):
        segment_file(tmp_path / "not-read.nrrd", ["CT/abdomen/liver"], tmp_path / "out.seg.nrrd", model=random_model)
    assert (tmp_path / "out.seg.nrrd").read_text(encoding="utf-8") == "previous result"


def test_existing_probability_map_is_not_replaced_without_overwrite(random_model, tmp_path):
    image, _ = off_centre_sphere()
    write_image(image, tmp_path / "ct.nrrd")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "CT_abdomen_liver.nrrd").write_text("an earlier result", encoding="utf-8")
    with pytest.raises(OutputPathError):
        segment_file(tmp_path / "ct.nrrd", ["CT/abdomen/liver"], tmp_path / "out.seg.nrrd", model=random_model,
                     device="cpu", probabilities_dir=tmp_path / "maps")
    assert (tmp_path / "maps" / "CT_abdomen_liver.nrrd").read_text(encoding="utf-8") == "an earlier result"


# ------------------------------------------------------------------------ report and progress
def test_report_gives_volume_in_ml_confidence_and_terminology(bright_segmenter):
    image, _ = off_centre_sphere()
    result = bright_segmenter.segment(image, ONTOLOGY.parse_many(["CT/abdomen/liver", "CT/abdomen/spleen"]))
    report = json.loads(json.dumps(result.report()))  # it must be plain JSON
    liver = report["segments"][0]
    voxels = int(result.segments[0].mask.sum())
    assert liver["prompt"] == "CT/abdomen/liver" and liver["structure"] == "liver" and liver["name"] == "liver"
    assert liver["voxels"] == voxels > 0 and liver["found"] is True
    assert liver["volume_ml"] == pytest.approx(voxels * 0.8 * 1.1 * 2.5 / 1000, abs=1e-3)
    assert 0.5 <= liver["confidence"] <= 1.0
    assert liver["color"] == list(ONTOLOGY.structures["liver"].color)
    assert liver["terminology"] == ONTOLOGY.structures["liver"].terminology.as_slicer_tag()
    assert report["input"] == {"shape_ijk": [40, 36, 16], "spacing_mm": [0.8, 1.1, 2.5]}
    assert report["device"] == "cpu"


def test_report_of_a_structure_not_found_says_so():
    image, _ = off_centre_sphere()
    unsure = bundle_of(random_network(logit_scale=1.0), threshold=0.99)  # probabilities stay near 0.5
    entry = Segmenter(unsure, device="cpu").segment(image, ABDOMEN[:1]).report()["segments"][0]
    assert entry["voxels"] == 0 and entry["volume_ml"] == 0 and entry["found"] is False
    assert entry["confidence"] is None


def test_kept_probabilities_lie_on_the_input_grid_and_threshold_to_the_masks(random_segmenter):
    image, _ = off_centre_sphere()
    result = random_segmenter.segment(image, ABDOMEN, keep_probabilities=True)
    for prompt, segment in zip(ABDOMEN, result.segments):
        probability = result.probabilities[prompt.key]
        assert probability.shape == image.array.shape
        assert 0.0 <= probability.min() and probability.max() <= 1.0
        np.testing.assert_array_equal(probability >= 0.5, segment.mask)


def test_progress_reports_stages_in_order_and_inference_reaches_one(random_segmenter):
    image, _ = off_centre_sphere()
    events = []
    random_segmenter.segment(image, ABDOMEN, progress=lambda stage, fraction, message: events.append((stage, fraction)))
    stages = list(dict.fromkeys(stage for stage, _ in events))
    assert stages == ["preprocessing", "inference", "postprocessing"]
    assert all(0.0 <= fraction <= 1.0 for _, fraction in events)
    inference = [fraction for stage, fraction in events if stage == "inference"]
    assert inference == sorted(inference) and inference[-1] == 1.0


# ---------------------------------------------------------------------------- bundled model
@pytest.mark.slow
def test_bundled_default_model_segments_a_small_ct_volume():
    if not (default_model_dir() / "config.json").is_file():
        pytest.skip(f"no bundled default model yet at {default_model_dir()} (the training issue ships it)")
    segmenter = Segmenter(load_bundle(), device="cpu", precision="fp32")
    image, _ = sphere_volume(shape_ijk=(48, 48, 24), spacing=(1.5, 1.5, 3.0), direction=oblique_direction())
    prompts = segmenter.parse_prompts(["CT/abdomen/liver", "CT/abdomen/spleen"])
    result = segmenter.segment(image, prompts)
    assert [s.mask.shape for s in result.segments] == [image.array.shape] * 2
    assert [entry["prompt"] for entry in result.report()["segments"]] == ["CT/abdomen/liver", "CT/abdomen/spleen"]


# ------------------------------------------------------------------- resampling only where a mask can be
@pytest.mark.parametrize("oblique", [True, False], ids=["oblique", "axis-aligned"])
@pytest.mark.parametrize("block", [2, 8, 64])
@pytest.mark.parametrize("threshold", [0.5, 0.9, 1.5])
def test_resampling_only_near_the_mask_gives_exactly_the_full_resampling(threshold, block, oblique):
    from scipy.spatial.transform import Rotation

    from DuPLUSLib.imageio import VolumeImage
    from DuPLUSLib.preprocessing import resample_mask_above, resample_onto

    rng = np.random.default_rng(3)
    probabilities = np.zeros((20, 24, 28), np.float32)
    probabilities[5:11, 8:15, 3:9] = rng.uniform(0.3, 1.0, (6, 7, 6))  # a small structure near a corner
    probabilities[15, 20, 25] = 0.95  # and one isolated voxel far from it
    source = VolumeImage(probabilities, (2.0, 2.0, 2.0), (-20.0, -30.0, -10.0), np.eye(3))
    rotation = Rotation.from_euler("xyz", [0.3, -0.2, 0.5]).as_matrix() if oblique else np.eye(3)[[1, 0, 2]]
    direction = rotation @ np.diag([1, -1, 1])  # axis-aligned: i and j swapped, j flipped (the separable path)
    spacing, shape_ijk = np.array([1.1, 0.9, 1.3]), np.array([45, 50, 30])
    structure_centre = np.array([-8.0, -7.0, 6.0])  # LPS centre of the small structure
    origin = structure_centre - direction @ (spacing * shape_ijk / 2)  # the oblique grid is centred on it
    target = VolumeImage(np.zeros(tuple(shape_ijk[::-1]), np.int16), tuple(spacing), tuple(origin), direction)

    full = resample_onto(source, target, "linear", 0.0)
    values, confidence, box = resample_mask_above(source, target, threshold, block=block)
    mask = np.zeros(full.shape, bool)
    mask[box] = values
    np.testing.assert_array_equal(mask, full >= threshold)
    if threshold < 1.0:
        assert mask.any()  # the case is not vacuous
        assert values.shape == tuple(s.stop - s.start for s in box) != full.shape  # kept in its box only
        assert confidence == pytest.approx(float(full[full >= threshold].mean()), rel=1e-6)
    else:
        assert confidence is None and values.size == 0


# ------------------------------------------------------------------- separable resampling, axis-aligned grids
@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]])],
                         ids=["identity", "flipped", "permuted"])
def test_separable_linear_resampling_equals_simpleitk_on_axis_aligned_grids(direction):
    """The engine's grid back onto a scan in any axis order: three 1D passes give ITK's values,
    edges included (within half a voxel of the source's edge: the edge value; beyond: 0)."""
    from DuPLUSLib.imageio import VolumeImage
    from DuPLUSLib.preprocessing import resample_linear, resample_onto

    rng = np.random.default_rng(5)
    source = VolumeImage(rng.uniform(0, 1, (9, 11, 13)).astype(np.float32), (4.0, 4.0, 4.0), (-20.0, -24.0, -16.0))
    spacing = np.array([0.9, 1.3, 2.1])
    shape_ijk = np.array([70, 40, 23])
    centre = np.array([6.0, -2.0, 1.0])
    origin = centre - direction @ (spacing * shape_ijk / 2)  # reaches past the source on every side
    target = VolumeImage(np.zeros(tuple(shape_ijk[::-1]), np.int16), tuple(spacing), tuple(origin), direction)

    expected = resample_onto(source, target, "linear", 0.0)
    actual = resample_linear(source, target)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert (expected == 0).any() and (expected > 0).mean() > 0.3  # both inside and outside are exercised
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(actual >= 0.5, expected >= 0.5)


def test_segment_masks_are_kept_in_their_boxes_and_written_whole(tmp_path):
    """A segment kept in its box reads back as the whole-grid mask it stands for."""
    from DuPLUSLib.imageio import SegmentMask, VolumeImage, read_segmentation, write_segmentation
    from DuPLUSLib.ontology import load_ontology

    ontology = load_ontology()
    grid = (20, 30, 40)
    values = np.zeros((5, 6, 7), bool)
    values[1:4, 2:5, 3:6] = True
    box = (slice(10, 15), slice(3, 9), slice(30, 37))
    in_box = SegmentMask(ontology.structures["liver"], values, 0.8, box, grid)
    whole = in_box.mask
    assert whole.shape == grid and whole.sum() == values.sum() == in_box.voxel_count()
    empty = SegmentMask(ontology.structures["spleen"], np.zeros((0, 0, 0), bool), None, (slice(0, 0),) * 3, grid)
    assert not empty.mask.any() and empty.voxel_count() == 0
    with pytest.raises(ValueError, match="grid_shape"):
        SegmentMask(ontology.structures["liver"], values, 0.8, box)

    image = VolumeImage(np.zeros(grid, np.int16), (1.0, 1.0, 2.0))
    path = write_segmentation([in_box, empty], image, tmp_path / "boxed.seg.nrrd")
    _, masks = read_segmentation(path, ontology)
    np.testing.assert_array_equal(masks["liver"], whole)
    assert not masks["spleen"].any()
    import slicerio

    extents = {s["tags"]["DuPLUS.Structure"]: s["extent"] for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]}
    assert extents["liver"] == [33, 35, 5, 7, 11, 13]  # i0 i1 j0 j1 k0 k1 of the tight box, inclusive
