"""The ``duplus`` command end to end: listing prompts, segmenting a file, refusing bad input with a
clear message and a non-zero exit, and stopping cleanly on SIGTERM.

Most cases call ``DuPLUSLib.cli.main`` in this process (the command is a thin wrapper around it);
the end-to-end run and the signal test start the real ``duplus`` executable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from engine_fixtures import (  # noqa: F401
    one_thread,
    right_handed_oblique_direction,
    save_random_bundle,
    sphere_volume,
    write_dicom_series,
)
from DuPLUSLib.cli import main
from DuPLUSLib.imageio import read_segmentation, write_image
from DuPLUSLib.ontology import load_ontology

# The command as this interpreter runs it: works whether or not the virtual environment is activated.
DUPLUS = [sys.executable, "-m", "DuPLUSLib.cli"]

pytestmark = pytest.mark.usefixtures("one_thread")
ONTOLOGY = load_ontology()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("keep_signal_handlers")  # duplus segment runs in-process here


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_random_bundle(tmp_path_factory.mktemp("models") / "random")


@pytest.fixture
def ct_file(tmp_path) -> Path:
    """A small oblique CT volume on disk."""
    folder = tmp_path / "input"
    folder.mkdir()
    image, _ = sphere_volume(shape_ijk=(32, 28, 12), radius_mm=7.0)
    return write_image(image, folder / "ct.nrrd")


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run_duplus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*DUPLUS, *args], capture_output=True, text=True, timeout=timeout, env=environment)


def segment_args(ct_file: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["segment", str(ct_file), "-p", "CT/abdomen/liver", "-o", str(out / "result.seg.nrrd"),
            "--model", str(model), "--device", "cpu", "--progress", "none", *extra]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------- prompts
def test_prompts_lists_every_modality_region_and_structure(capsys):
    assert main(["prompts"]) == 0
    listing = capsys.readouterr().out
    assert "CT/abdomen/liver" in listing and "MRI/brain/*" in listing and "US/pelvis/lesion" in listing
    assert all(f"{p.key} " in listing for p in ONTOLOGY.all_prompts())


def test_prompts_json_is_the_ontology(capsys):
    assert main(["prompts", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["version"] == ONTOLOGY.version
    assert listing["hierarchy"] == ONTOLOGY.hierarchy
    assert listing["structures"]["liver_tumour"]["terminology"] == ONTOLOGY.structures["liver_tumour"].terminology.as_slicer_tag()
    assert listing["structures"]["liver"]["color"] == list(ONTOLOGY.structures["liver"].color)


def test_prompts_of_one_modality_by_synonym(capsys):
    assert main(["prompts", "--json", "--modality", "ultrasound"]) == 0
    assert list(json.loads(capsys.readouterr().out)["hierarchy"]) == ["US"]


def test_prompts_of_an_unknown_modality_is_refused(capsys):
    assert main(["prompts", "--modality", "xray"]) == 2
    assert "'xray' is not a known modality" in capsys.readouterr().err


def test_prompts_answers_without_loading_torch():
    code = "import sys; from DuPLUSLib.cli import main; main(['prompts']); print('torch' in sys.modules, file=sys.stderr)"
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0
    assert finished.stderr.strip().endswith("False")


# ----------------------------------------------------------------------------- segment: happy
def test_segment_writes_segmentation_report_and_preview_with_json_progress(ct_file, out, model):
    finished = run_duplus(
        "segment", str(ct_file), "-p", "CT/abdomen/liver", "-p", "CT/abdomen/liver_tumour",
        "-o", str(out / "ct.seg.nrrd"), "--report", str(out / "ct.json"), "--preview", str(out / "ct.png"),
        "--model", str(model), "--device", "cpu", "--progress", "json",
    )
    assert finished.returncode == 0, finished.stderr
    events = [json.loads(line) for line in finished.stdout.splitlines()]
    progress, done = events[:-1], events[-1]
    assert progress and all(e["event"] == "progress" for e in progress)
    assert all(0.0 <= e["fraction"] <= 1.0 and e["stage"] and "message" in e for e in progress)
    assert {"loading", "preprocessing", "inference", "postprocessing", "writing"} <= {e["stage"] for e in progress}
    assert done["event"] == "done" and done["output"] == str((out / "ct.seg.nrrd").resolve())
    assert [s["structure"] for s in done["segments"]] == ["liver", "liver_tumour"]

    assert files_in(out) == ["ct.json", "ct.png", "ct.seg.nrrd"]
    segmentation = slicerio.read_segmentation(str(out / "ct.seg.nrrd"))
    assert [s["name"] for s in segmentation["segments"]] == ["liver", "liver tumour"]
    report = json.loads((out / "ct.json").read_text(encoding="utf-8"))
    assert [s["prompt"] for s in report["segments"]] == ["CT/abdomen/liver", "CT/abdomen/liver_tumour"]
    assert report["input"]["path"] == str(ct_file.resolve())
    assert (out / "ct.png").read_bytes()[:8] == PNG_MAGIC


def test_segment_reads_and_writes_paths_with_spaces_and_non_ascii_characters(ct_file, tmp_path, model):
    folder = tmp_path / "Patient Müller – 李 scans"
    try:
        os.fsencode(folder)
    except UnicodeEncodeError:
        pytest.skip(f"this file system encoding ({sys.getfilesystemencoding()}) cannot name such a folder")
    folder.mkdir()
    source = folder / "CT abdomen é.nrrd"
    source.write_bytes(ct_file.read_bytes())
    finished = run_duplus(
        "segment", str(source), "-p", "CT/abdomen/liver", "-o", str(folder / "liver ø.seg.nrrd"),
        "--report", str(folder / "report ø.json"), "--model", str(model), "--device", "cpu", "--progress", "json",
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads((folder / "report ø.json").read_text(encoding="utf-8"))
    assert report["input"]["path"] == str(source.resolve())
    assert report["output"] == str((folder / "liver ø.seg.nrrd").resolve())
    assert list(read_segmentation(folder / "liver ø.seg.nrrd", ONTOLOGY)[1]) == ["liver"]


def test_segment_output_has_the_input_geometry(ct_file, out, model, capsys):
    assert main(segment_args(ct_file, out, model)) == 0
    geometry, masks = read_segmentation(out / "result.seg.nrrd", ONTOLOGY)
    image = sitk.ReadImage(str(ct_file))
    np.testing.assert_allclose(geometry.spacing, image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(geometry.origin, image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(geometry.direction.ravel(), image.GetDirection(), atol=1e-6)
    assert masks["liver"].shape == sitk.GetArrayFromImage(image).shape


def test_segment_reads_a_dicom_series_folder(tmp_path, out, model):
    image, _ = sphere_volume(direction=right_handed_oblique_direction())
    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(image, series, "1.2.826.0.1.3680043.8.498.4001")
    assert main(segment_args(series, out, model)) == 0
    geometry, masks = read_segmentation(out / "result.seg.nrrd", ONTOLOGY)
    assert geometry.same_geometry(image, tolerance=1e-4)


def test_segment_prints_a_summary_table_after_the_progress_bar(ct_file, out, model, capsys):
    assert main([*segment_args(ct_file, out, model)[:-2], "--progress", "bar"]) == 0
    captured = capsys.readouterr()
    assert "structure" in captured.out and "volume ml" in captured.out and "liver" in captured.out
    assert str((out / "result.seg.nrrd").resolve()) in captured.out
    assert "%" in captured.err  # the tqdm bar


def test_segment_star_prompt_with_modality_and_probabilities(ct_file, out, model, capsys):
    args = segment_args(ct_file, out, model, "--probabilities", str(out / "maps"), "--report", str(out / "r.json"))
    args[args.index("CT/abdomen/liver")] = "pelvis/*"
    assert main([*args, "--modality", "CT"]) == 0
    report = json.loads((out / "r.json").read_text(encoding="utf-8"))
    keys = [f"CT/pelvis/{s}" for s in ONTOLOGY.structures_of("CT", "pelvis")]
    assert [s["prompt"] for s in report["segments"]] == keys
    assert sorted(report["probabilities"]) == sorted(keys)
    assert all(Path(path).is_file() for path in report["probabilities"].values())


def test_existing_output_is_replaced_with_overwrite(ct_file, out, model):
    (out / "result.seg.nrrd").write_text("old", encoding="utf-8")
    assert main([*segment_args(ct_file, out, model), "--overwrite"]) == 0
    assert slicerio.read_segmentation(str(out / "result.seg.nrrd"))["segments"][0]["name"] == "liver"


# ------------------------------------------------------------------------------ segment: bad
def assert_refused(argv, out: Path, capsys, message: str, before: list[str] | None = None) -> None:
    """Exit status 2, one clear line on stderr (no traceback), and the output folder untouched."""
    before = files_in(out) if before is None else before
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("duplus: error: ") and message in err, err
    assert "Traceback" not in err
    assert files_in(out) == before


def test_2d_image_is_refused(tmp_path, out, model, capsys):
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(100, dtype=np.int16).reshape(10, 10)), str(flat))
    assert_refused(segment_args(flat, out, model), out, capsys, "2D image")


def test_image_with_nan_voxels_is_refused(tmp_path, out, model, capsys):
    image, _ = sphere_volume(dtype=np.float32)
    image.array[2, 3, 4] = np.nan
    path = write_image(image, tmp_path / "nan.nrrd")
    assert_refused(segment_args(path, out, model), out, capsys, "NaN or infinite")


def test_a_sheared_nrrd_is_refused(tmp_path, out, model, capsys):
    import nrrd

    image, _ = sphere_volume()
    sheared = tmp_path / "gantry tilt.nrrd"
    directions = np.diag(image.spacing).astype(float)
    directions[2] = [0.0, 0.3 * image.spacing[1], image.spacing[2]]  # k axis leans along j
    nrrd.write(str(sheared), np.ascontiguousarray(image.array.transpose(2, 1, 0)),
               {"space": "left-posterior-superior", "space directions": directions, "space origin": np.zeros(3)})
    assert_refused(segment_args(sheared, out, model), out, capsys, "not perpendicular")


def test_unknown_prompt_is_refused_listing_choices(ct_file, out, model, capsys):
    args = segment_args(ct_file, out, model)
    args[args.index("CT/abdomen/liver")] = "CT/abdomen/unicorn"
    assert_refused(args, out, capsys, "choose one of: liver, liver_tumour, spleen")


def test_structure_not_valid_for_the_modality_is_refused(ct_file, out, model, capsys):
    args = segment_args(ct_file, out, model)
    args[args.index("CT/abdomen/liver")] = "US/thorax/trachea"
    assert_refused(args, out, capsys, "'trachea' is not a structure of US thorax")


def test_missing_model_folder_is_refused(ct_file, out, tmp_path, capsys):
    assert_refused(segment_args(ct_file, out, tmp_path / "no-model"), out, capsys, "does not exist")


def test_tampered_model_is_refused(ct_file, out, tmp_path, capsys):
    folder = save_random_bundle(tmp_path / "tampered")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert_refused(segment_args(ct_file, out, folder), out, capsys, "does not match its sha256")


def test_missing_output_folder_is_refused(ct_file, out, model, capsys):
    args = segment_args(ct_file, out, model)
    args[args.index("-o") + 1] = str(out / "missing" / "result.seg.nrrd")
    assert_refused(args, out, capsys, "does not exist")


def test_read_only_output_folder_is_refused(ct_file, tmp_path, model, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with rights that ignore folder permissions (root)")
        assert_refused(segment_args(ct_file, locked, model), locked, capsys, "not writable")
    finally:
        locked.chmod(0o755)


def _sys_refuses_new_files() -> bool:
    try:
        handle, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(handle)
    os.unlink(name)
    return False


@pytest.mark.skipif(not os.path.isdir("/sys") or not _sys_refuses_new_files(), reason="needs Linux /sys")
def test_output_folder_that_refuses_new_files_is_refused_cleanly(ct_file, model, capsys):
    args = segment_args(ct_file, Path("/sys"), model)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("duplus: error: ") and "Traceback" not in err


def test_existing_output_without_overwrite_is_refused_and_kept(ct_file, out, model, capsys):
    (out / "result.seg.nrrd").write_text("previous result", encoding="utf-8")
    assert_refused(segment_args(ct_file, out, model), out, capsys, "already exists; pass --overwrite")
    assert (out / "result.seg.nrrd").read_text(encoding="utf-8") == "previous result"


def test_existing_report_without_overwrite_is_refused_before_anything_is_written(ct_file, out, model, capsys):
    (out / "r.json").write_text("{}", encoding="utf-8")
    args = segment_args(ct_file, out, model, "--report", str(out / "r.json"))
    assert_refused(args, out, capsys, "r.json' already exists")


def test_output_path_that_is_a_folder_is_refused_even_with_overwrite(ct_file, out, model, capsys):
    (out / "a-folder").mkdir()
    args = segment_args(ct_file, out, model, "--overwrite")
    args[args.index("-o") + 1] = str(out / "a-folder")
    assert_refused(args, out, capsys, "a-folder")


@pytest.mark.parametrize("name, format, message", [
    ("liver", "nifti", "must end in .nii.gz or .nii for --format nifti"),
    ("liver.seg.nrrd", "nifti", "must end in .nii.gz or .nii"),
    ("liver.nii.gz", "seg.nrrd", "ends like a nifti file but --format is seg.nrrd"),
])
def test_an_output_name_that_contradicts_its_format_is_refused_before_the_work(ct_file, out, model, capsys,
                                                                                name, format, message):
    """The NIfTI writer picks the file type from the ending: a mismatch would fail after inference
    or write one format under another's name."""
    args = segment_args(ct_file, out, model, "--format", format)
    args[args.index("-o") + 1] = str(out / name)
    assert_refused(args, out, capsys, message)


def test_probabilities_path_that_is_a_file_is_refused_before_anything_is_written(ct_file, out, model, capsys):
    (out / "maps").write_text("a file, not a folder", encoding="utf-8")
    assert_refused(segment_args(ct_file, out, model, "--probabilities", str(out / "maps")), out, capsys, "maps")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_on_a_machine_without_a_gpu_is_refused(ct_file, out, model, capsys):
    args = segment_args(ct_file, out, model)
    args[args.index("cpu")] = "cuda"
    assert_refused(args, out, capsys, "choose the CPU (--device cpu)")


def test_errors_are_json_events_with_json_progress(tmp_path, out, model, capsys):
    image, _ = sphere_volume()
    path = write_image(image.with_array(np.zeros_like(image.array)), tmp_path / "constant.nrrd")
    args = segment_args(path, out, model)
    args[args.index("none")] = "json"
    assert main(args) == 2
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["event"] == "error" and last["error"] == "InputImageError" and "constant" in last["message"]


# ------------------------------------------------------------------------------------ SIGTERM
@pytest.mark.slow
def test_sigterm_during_inference_stops_promptly_with_code_130_and_writes_nothing(tmp_path):
    # a fine model grid makes the random model's run take several seconds
    model = save_random_bundle(tmp_path / "fine-model", spacing=(0.75, 0.75, 0.75))
    image, _ = sphere_volume(shape_ijk=(96, 96, 64), spacing=(1.0, 1.0, 1.0), direction=np.eye(3))
    source = write_image(image, tmp_path / "ct.nrrd")
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [*DUPLUS, "segment", str(source), "-p", "CT/abdomen/liver", "-o", str(out / "ct.seg.nrrd"),
         "--report", str(out / "ct.json"), "--preview", str(out / "ct.png"),
         "--model", str(model), "--device", "cpu", "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        events, sent, stopped_after = [], None, None
        for line in process.stdout:  # one JSON event per line, read as they come
            events.append(json.loads(line))
            if sent is None and events[-1].get("stage") == "inference":
                assert events[-1]["fraction"] < 0.5, "the run is too short to interrupt; enlarge the volume"
                process.send_signal(signal.SIGTERM)
                sent = time.monotonic()
            elif sent is not None and events[-1]["event"] != "progress":
                stopped_after = time.monotonic() - sent
        returncode = process.wait(timeout=30)
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert sent is not None, events
    assert returncode == 130, err
    assert events[-1]["event"] == "error" and events[-1]["error"] == "CancelledError"
    assert stopped_after is not None and stopped_after < 5.0
    assert "duplus: error: segmentation cancelled" in err
    assert files_in(out) == []
