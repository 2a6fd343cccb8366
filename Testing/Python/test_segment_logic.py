"""The DuPLUS Segment module's Logic on a real MRML scene (slicer-core) with the real worker process.

Volume node in, ``python -m DuPLUSLib.worker`` doing the work, segmentation node out. The model is
``engine_fixtures``' hand-set "bright region" network: whatever the prompt, it marks the bright
sphere of the test volume, so the imported masks can be checked voxel by voxel against the
sphere's true position through an oblique, anisotropic grid. The bundled default model runs on the
bundled sample volume in the last test.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

slicer = pytest.importorskip("slicer")

import DuPLUSSegment  # noqa: E402  (the module file, put on sys.path by conftest)
from DuPLUSLib import mrml  # noqa: E402
from DuPLUSLib.errors import (  # noqa: E402
    DeviceError,
    InputImageError,
    ModelBundleError,
    OutputPathError,
    UnknownPromptError,
)
from DuPLUSLib.ontology import load_ontology  # noqa: E402
from DuPLUSLib.segment_process import RunnerState, WorkerError, WorkerTimeoutError  # noqa: E402
from engine_fixtures import dice, save_bright_region_bundle, sphere_volume  # noqa: E402

PROMPTS = ["CT/abdomen/liver", "CT/abdomen/spleen"]
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_bright_region_bundle(tmp_path_factory.mktemp("model") / "bright")


@pytest.fixture(scope="module")
def shared_logic():
    """One Logic (one warm worker) for the tests that leave its worker alive."""
    logic = DuPLUSSegment.DuPLUSSegmentLogic(threads=1)
    yield logic
    logic.shutdown()


@pytest.fixture
def logic(shared_logic):
    assert not shared_logic.isBusy
    yield shared_logic
    shared_logic.cancel()


@pytest.fixture
def own_logic():
    """A Logic of its own, for tests that cancel or kill its worker."""
    logic = DuPLUSSegment.DuPLUSSegmentLogic(threads=1)
    yield logic
    logic.shutdown()


@pytest.fixture
def sphere(mrml_scene):
    """A CT-like volume node with a bright sphere, on an oblique anisotropic grid, and its truth."""
    image, truth = sphere_volume(shape_ijk=(40, 36, 16), radius_mm=9.0)
    return mrml.volume_node_from_image(image, "phantom"), truth


def scene_snapshot(scene) -> list[tuple[str, str]]:
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return sorted((node.GetClassName(), node.GetName() or "") for node in nodes)


def wait_for_progress(logic, events, timeout_s=TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not events and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.01)
    assert events, "the worker reported no progress"


def worker_processes() -> set[int]:
    """Pids of the worker processes this test process has running (alive, not zombies)."""
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if "DuPLUSLib.worker" in " ".join(_cmdline(p)) and _alive(p)
    }


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []


# ----------------------------------------------------------------------------- the module file
def test_module_file_offers_the_scripted_module_classes():
    for name in ("DuPLUSSegment", "DuPLUSSegmentWidget", "DuPLUSSegmentLogic", "DuPLUSSegmentTest",
                 "DuPLUSSegmentParameterNode"):
        assert hasattr(DuPLUSSegment, name)
    assert not DuPLUSSegment.IN_SLICER_APPLICATION


# ----------------------------------------------------------------------------- volume in, segments out
def test_segment_returns_named_coloured_tagged_segments_on_the_input_grid(logic, sphere, model_dir):
    volume, truth = sphere
    segmentation = logic.segment(volume, PROMPTS, model=str(model_dir), device="cpu", timeout=TIMEOUT_S)
    ontology = load_ontology()
    segments = mrml.imported_segments(segmentation)
    assert [s.structure for s in segments] == ["liver", "spleen"]
    for segment in segments:
        structure = ontology.structures[segment.structure]
        assert segment.name == structure.name
        np.testing.assert_allclose(segment.color, structure.color_float, atol=1e-3)
        assert segment.terminology == structure.terminology.as_slicer_tag()
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment.segment_id, volume) > 0
        assert mask.shape == truth.shape
        assert dice(mask, truth) > 0.8, f"{segment.name}: the sphere came back elsewhere"
    role = segmentation.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReference(role) is volume
    assert segmentation.GetScene() is volume.GetScene()


def test_second_run_is_served_by_the_warm_worker(logic, sphere, model_dir):
    volume, _ = sphere
    logic.segment(volume, PROMPTS[:1], model=str(model_dir), device="cpu", timeout=TIMEOUT_S)
    pid = logic.workerPid
    logic.segment(volume, PROMPTS[1:], model=str(model_dir), device="cpu", timeout=TIMEOUT_S)
    assert logic.workerPid == pid
    assert logic.lastReport["model_reused"] is True


def test_non_blocking_form_reports_through_callbacks(logic, sphere, model_dir):
    volume, _ = sphere
    seen: dict[str, list] = {"progress": [], "log": [], "finished": [], "error": []}
    logic.segmentAsync(
        volume, PROMPTS, model=str(model_dir), device="cpu",
        onProgress=lambda stage, fraction, message: seen["progress"].append(stage),
        onLog=seen["log"].append,
        onFinished=seen["finished"].append,
        onError=seen["error"].append,
    )
    assert logic.isBusy
    logic.wait(timeout=TIMEOUT_S)
    assert not seen["error"] and len(seen["finished"]) == 1
    assert {"inference", "importing"} <= set(seen["progress"])
    assert any(line.startswith("liver:") and "confidence" in line for line in seen["log"])
    assert logic.state is RunnerState.IDLE


def test_a_part_kept_beside_a_dropped_one_of_its_size_is_flagged_for_checking(logic, model_dir, mrml_scene, tmp_path):
    """The model keeps only the liver's largest part; with two bright spheres of nearly one size it
    cannot know which is the liver, and the log and ``segmentsToCheck`` say so; the spleen, not
    post-processed, keeps both and is not flagged."""
    import json

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["inference"]["largest_component"] = ["liver"]
    shutil.copytree(model_dir, tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    image, first = sphere_volume(shape_ijk=(48, 24, 16), centre_ijk=(12, 12, 8), radius_mm=8.0)
    second = sphere_volume(shape_ijk=(48, 24, 16), centre_ijk=(36, 12, 8), radius_mm=7.0)[1]
    image = image.with_array(np.where(second, np.int16(300), image.array))
    volume = mrml.volume_node_from_image(image, "two spheres")
    lines: list[str] = []
    done: list = []
    logic.segmentAsync(volume, PROMPTS, model=str(tmp_path / "model"), device="cpu", onLog=lines.append,
                       onFinished=done.append)
    logic.wait(timeout=TIMEOUT_S)
    assert len(done) == 1 and logic.segmentsToCheck == ["liver"]
    assert [line for line in lines if line.startswith("Check liver: only its largest part is kept")]
    masks = {segment.structure: slicer.util.arrayFromSegmentBinaryLabelmap(done[0], segment.segment_id, volume) > 0
             for segment in mrml.imported_segments(done[0])}
    assert dice(masks["liver"], first) > 0.8 and not (masks["liver"] & second).any()  # the larger sphere
    assert dice(masks["spleen"], first | second) > 0.8


def test_results_are_added_to_an_existing_segmentation(logic, sphere, model_dir, mrml_scene):
    volume, _ = sphere
    existing = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.GetSegmentation().AddEmptySegment("drawn", "my tumour")
    result = logic.segment(volume, PROMPTS[:1], segmentationNode=existing, model=str(model_dir), timeout=TIMEOUT_S)
    assert result is existing
    assert [s.name for s in mrml.imported_segments(existing)] == ["my tumour", "liver"]


def test_existing_segments_are_not_overwritten_silently(logic, sphere, model_dir, mrml_scene):
    volume, _ = sphere
    existing = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.GetSegmentation().AddEmptySegment("drawn", "liver")
    with pytest.raises(OutputPathError, match="already has segment"):
        logic.segment(volume, PROMPTS, segmentationNode=existing, model=str(model_dir))
    assert not logic.isBusy
    assert [s.segment_id for s in mrml.imported_segments(existing)] == ["drawn"]
    logic.segment(volume, PROMPTS[:1], segmentationNode=existing, replace=True, model=str(model_dir), timeout=TIMEOUT_S)
    replaced = mrml.imported_segments(existing)
    assert [s.name for s in replaced] == ["liver"] and replaced[0].structure == "liver"


def test_an_output_under_another_transform_is_refused_before_the_run(logic, sphere, model_dir, mrml_scene):
    volume, _ = sphere
    existing = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.SetAndObserveTransformNodeID(mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    with pytest.raises(OutputPathError, match="another transform"):
        logic.prepare(volume, PROMPTS, existing, model=str(model_dir))
    assert not logic.isBusy


# ----------------------------------------------------------------------------- cancel and crash
def test_cancel_mid_run_leaves_the_scene_as_it_was_and_no_process(own_logic, sphere, model_dir, mrml_scene):
    volume, _ = sphere
    before = scene_snapshot(mrml_scene)
    events, outcome = [], []
    own_logic.segmentAsync(
        volume, PROMPTS, model=str(model_dir),
        onProgress=lambda *args: events.append(args),
        onFinished=outcome.append, onError=outcome.append, onCancelled=lambda: outcome.append("cancelled"),
    )
    folder = own_logic._workFolder
    wait_for_progress(own_logic, events)
    worker = own_logic.workerPid
    assert worker in worker_processes()
    own_logic.cancel()
    assert outcome == ["cancelled"]
    assert scene_snapshot(mrml_scene) == before
    assert worker not in worker_processes()
    assert not Path(folder).exists()
    own_logic.poll()
    assert outcome == ["cancelled"]


def test_closing_the_scene_mid_run_cancels_it_with_no_error_and_no_process(own_logic, sphere, model_dir, mrml_scene):
    volume, _ = sphere
    events, outcome = [], []
    own_logic.segmentAsync(volume, PROMPTS, model=str(model_dir), onProgress=lambda *a: events.append(a),
                           onFinished=outcome.append, onError=outcome.append,
                           onCancelled=lambda: outcome.append("cancelled"))
    folder = own_logic._workFolder
    wait_for_progress(own_logic, events)
    worker = own_logic.workerPid
    mrml_scene.Clear(0)  # File > Close Scene while the worker segments
    assert outcome == ["cancelled"] and not own_logic.isBusy
    assert worker not in worker_processes() and not Path(folder).exists()
    own_logic.poll()
    assert outcome == ["cancelled"] and mrml_scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_a_worker_that_dies_gives_a_clear_error_and_leaves_the_scene(own_logic, sphere, model_dir, mrml_scene):
    volume, _ = sphere
    before = scene_snapshot(mrml_scene)
    events = []
    own_logic.segmentAsync(volume, PROMPTS, model=str(model_dir), onProgress=lambda *a: events.append(a),
                           onError=lambda error: events.append(error))
    wait_for_progress(own_logic, events)
    worker = own_logic.workerPid
    os.kill(worker, signal.SIGKILL)
    own_logic.wait(timeout=30)
    errors = [e for e in events if isinstance(e, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], WorkerError)
    assert "was killed" in str(errors[0]) and "nothing was imported" in str(errors[0])
    assert scene_snapshot(mrml_scene) == before
    assert worker not in worker_processes() and not own_logic.isBusy


def test_blocking_segment_raises_cancelled_when_timed_out(own_logic, sphere, model_dir):
    volume, _ = sphere
    with pytest.raises(WorkerTimeoutError, match="did not finish within 0 s and was cancelled"):
        own_logic.segment(volume, PROMPTS, model=str(model_dir), timeout=0.2)
    assert not own_logic.isBusy and own_logic.workerPid is None


# ----------------------------------------------------------------------------- bad input
def test_no_volume_is_refused(logic):
    with pytest.raises(InputImageError, match="no input volume"):
        logic.segment(None, PROMPTS)


def test_two_dimensional_volume_is_refused(logic, mrml_scene):
    flat = slicer.util.addVolumeFromArray(np.zeros((1, 16, 16), np.int16), name="slice")
    with pytest.raises(InputImageError, match="2D"):
        logic.segment(flat, PROMPTS)


def test_four_dimensional_volume_is_refused(logic, mrml_scene):
    frames = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6, 8), np.float32), name="frames",
                                            nodeClassName="vtkMRMLVectorVolumeNode")
    with pytest.raises(InputImageError, match="4D"):
        logic.segment(frames, PROMPTS)


def test_label_map_as_input_is_refused(logic, mrml_scene):
    labels = slicer.util.addVolumeFromArray(np.zeros((8, 8, 8), np.uint8), name="labels",
                                            nodeClassName="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputImageError, match="label map"):
        logic.segment(labels, PROMPTS)


def test_unknown_prompt_is_refused_before_any_work(logic, sphere):
    volume, _ = sphere
    with pytest.raises(UnknownPromptError, match="choose one of"):
        logic.segment(volume, ["CT/abdomen/unicorn"])
    assert not logic.isBusy


def test_missing_model_folder_is_refused(logic, sphere, tmp_path):
    volume, _ = sphere
    with pytest.raises(ModelBundleError, match="does not exist"):
        logic.segment(volume, PROMPTS, model=str(tmp_path / "nowhere"))


def test_corrupt_model_folder_is_refused_and_nothing_imported(logic, sphere, model_dir, tmp_path, mrml_scene):
    volume, _ = sphere
    corrupt = shutil.copytree(model_dir, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not weights")
    before = scene_snapshot(mrml_scene)
    with pytest.raises(ModelBundleError, match="sha256"):
        logic.segment(volume, PROMPTS, model=str(corrupt), timeout=TIMEOUT_S)
    assert scene_snapshot(mrml_scene) == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpu_asked_where_none_is_refused(logic, sphere, model_dir, mrml_scene):
    volume, _ = sphere
    before = scene_snapshot(mrml_scene)
    with pytest.raises(DeviceError, match="GPU"):
        logic.segment(volume, PROMPTS, model=str(model_dir), device="cuda", timeout=TIMEOUT_S)
    assert scene_snapshot(mrml_scene) == before


def test_worker_that_cannot_start_is_refused(sphere, model_dir, tmp_path):
    volume, _ = sphere
    logic = DuPLUSSegment.DuPLUSSegmentLogic(python=str(tmp_path / "missing-python"))
    with pytest.raises(WorkerError, match="cannot start"):
        logic.segment(volume, PROMPTS, model=str(model_dir))
    assert not logic.isBusy


# ----------------------------------------------------------------------------- GUI helpers
def test_modality_is_guessed_from_intensities(logic, sphere, mrml_scene):
    volume, _ = sphere
    guess, region = logic.guessModality(volume)
    assert guess.modality is None or guess.modality in ("CT", "MRI")
    air = slicer.util.addVolumeFromArray(np.full((8, 8, 8), -1000, np.int16), name="air")
    assert logic.guessModality(air)[0].modality == "CT"


def test_sample_volume_is_recognised_as_ct(logic, mrml_scene):
    from DuPLUSLib.imageio import read_image
    from DuPLUSLib.samples import sample_volume_path

    if not sample_volume_path().is_file():
        pytest.skip("the sample volume is not in this checkout yet")
    volume = mrml.volume_node_from_image(read_image(sample_volume_path()), "sample")
    guess, _ = logic.guessModality(volume)
    assert guess.modality == "CT" and "Hounsfield" in guess.reason


def test_input_check_says_what_is_wrong_for_the_tooltip(logic, sphere, mrml_scene):
    volume, _ = sphere
    assert logic.checkInputVolume(volume) is None
    assert "no input volume" in logic.checkInputVolume(None)
    labels = slicer.util.addVolumeFromArray(np.zeros((8, 8, 8), np.uint8), name="labels",
                                            nodeClassName="vtkMRMLLabelMapVolumeNode")
    assert "label map" in logic.checkInputVolume(labels)
    sheared = np.eye(3)
    sheared[:, 2] = [0.0, 0.2, 1.0] / np.hypot(0.2, 1.0)  # unit axes, 11 degrees apart from perpendicular
    volume.SetIJKToRASDirections(sheared)
    assert "not perpendicular" in logic.checkInputVolume(volume)
    with pytest.raises(InputImageError, match="not perpendicular"):  # refused before any worker starts
        logic.segmentAsync(volume, ["CT/abdomen/liver"])
    assert not logic.isBusy


def test_dependencies_are_all_present_here(logic):
    assert logic.missingDependencies() == []
    logic.installDependencies(confirm=lambda message: pytest.fail("nothing to ask"))  # returns without asking


# ----------------------------------------------------------------------------- the bundled model
def test_bundled_model_segments_the_bundled_sample(logic, mrml_scene):
    from DuPLUSLib.bundle import default_model_dir
    from DuPLUSLib.imageio import read_image, read_segmentation
    from DuPLUSLib.samples import sample_labels_path, sample_volume_path

    if not (default_model_dir() / "config.json").is_file() or not sample_volume_path().is_file():
        pytest.skip("the bundled model or sample volume is not in this checkout yet")
    volume = mrml.volume_node_from_image(read_image(sample_volume_path()), "sample")
    segmentation = logic.segment(volume, PROMPTS, device="cpu", timeout=600)
    _, truth = read_segmentation(sample_labels_path(), load_ontology())
    for segment in mrml.imported_segments(segmentation):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment.segment_id, volume) > 0
        assert mask.any(), f"{segment.name} not found"
        if segment.structure in truth:
            assert dice(mask, truth[segment.structure]) > 0.5
