"""The background worker and its process manager, with real worker processes and real model folders.

Each test starts ``python -m DuPLUSLib.worker`` for real (one torch thread; small volumes and the
small hand-made models of ``engine_fixtures``), so protocol, warm reuse, cancellation and crashes
are what a Slicer user would get.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from DuPLUSLib.errors import CancelledError, DeviceError, ModelBundleError, UnknownPromptError
from DuPLUSLib.imageio import write_image
from DuPLUSLib.segment_process import (
    RunCallbacks,
    RunnerState,
    SegmentationRunner,
    WorkerError,
    worker_command,
    worker_environment,
)
from DuPLUSLib.worker import Worker
from engine_fixtures import save_random_bundle, sphere_volume

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_random_bundle(tmp_path_factory.mktemp("model") / "random")


@pytest.fixture
def input_path(tmp_path) -> Path:
    image, _ = sphere_volume(shape_ijk=(24, 20, 12))
    return write_image(image, tmp_path / "input.nrrd")


@pytest.fixture(scope="module")
def warm_runner():
    """One warm worker for the tests that leave it running: torch and MONAI load once."""
    runner = SegmentationRunner(threads=1)
    yield runner
    runner.shutdown()


@pytest.fixture
def runner(warm_runner):
    assert not warm_runner.busy
    yield warm_runner
    if warm_runner.busy:
        warm_runner.cancel()


@pytest.fixture
def fresh_runner():
    """A runner of its own, for tests that cancel or kill its worker."""
    runner = SegmentationRunner(threads=1)
    yield runner
    runner.shutdown()


def request(input_path: Path, model_dir: Path, name: str = "out", **extra) -> dict:
    folder = input_path.parent
    return {
        "input": str(input_path),
        "prompts": ["CT/abdomen/liver", "CT/abdomen/spleen"],
        "output": str(folder / f"{name}.seg.nrrd"),
        "report": str(folder / f"{name}.json"),
        "model": str(model_dir),
        "device": "cpu",
        **extra,
    }


class Recorder(RunCallbacks):
    """Callbacks that remember what happened, in order."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple] = []
        self.on_progress = lambda stage, fraction, message: self.events.append(("progress", stage, fraction))
        self.on_done = lambda event: self.events.append(("done", event))
        self.on_error = lambda error: self.events.append(("error", error))
        self.on_cancelled = lambda: self.events.append(("cancelled",))
        self.on_log = lambda line: None

    def outcome(self):
        return self.events[-1] if self.events else None


def run_to_end(runner: SegmentationRunner, message: dict) -> Recorder:
    recorder = Recorder()
    runner.submit(message, recorder)
    runner.wait(timeout_s=TIMEOUT_S)
    return recorder


def run_worker_process(args: list[str], stdin: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        worker_command(threads=1) + args,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_environment(threads=1),
    )


def no_process_left(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --------------------------------------------------------------------------- the worker process
def test_one_shot_worker_writes_the_segmentation_and_only_json_on_stdout(input_path, model_dir):
    message = request(input_path, model_dir, id="only")
    result = run_worker_process(["--once", "--request", json.dumps(message)], stdin="")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["event"] == "ready"
    assert {e["event"] for e in events[1:-1]} == {"progress"}
    done = events[-1]
    assert done["event"] == "done" and done["id"] == "only"
    assert [s["structure"] for s in done["segments"]] == ["liver", "spleen"]
    assert Path(done["output"]).is_file() and Path(done["report"]).is_file()


def test_one_shot_worker_exits_non_zero_with_the_error_class(input_path, model_dir):
    message = request(input_path, model_dir, prompts=["CT/abdomen/unicorn"])
    result = run_worker_process(["--once"], stdin=json.dumps(message) + "\n")
    assert result.returncode == 2
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["event"] == "error" and error["error"] == "UnknownPromptError"
    assert "choose one of" in error["message"]


def test_worker_answers_ping_and_stops_on_quit(model_dir):
    result = run_worker_process([], stdin='{"command": "ping"}\n{"command": "quit"}\n{"command": "ping"}\n')
    events = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert result.returncode == 0 and events == ["ready", "pong", "bye"]


def test_preloading_a_missing_model_fails_before_ready(tmp_path):
    result = run_worker_process(["--preload", "--model", str(tmp_path / "nowhere")], stdin="")
    assert result.returncode == 2
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["event"], e["error"]) for e in events] == [("error", "ModelBundleError")]


def test_worker_stops_cleanly_at_end_of_input():
    result = run_worker_process([], stdin="")
    assert result.returncode == 0
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["ready"]


def test_worker_survives_a_malformed_request_line(input_path, model_dir):
    lines = ["this is not json", json.dumps({"input": "x"}), json.dumps({"command": "ping", "id": "after"})]
    result = run_worker_process([], stdin="\n".join(lines) + "\n")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    assert [e["error"] for e in errors] == ["ProtocolError", "ProtocolError"]
    assert "lacks prompts, output" in errors[1]["message"]
    assert events[-1] == {"event": "pong", "id": "after"}


def test_sigterm_stops_an_idle_worker_promptly():
    process = subprocess.Popen(
        worker_command(threads=1), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=worker_environment(threads=1),
    )
    try:
        assert json.loads(process.stdout.readline())["event"] == "ready"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            process.kill()


def test_worker_ends_itself_when_the_program_that_started_it_is_killed(tmp_path):
    """Its stdin is a FIFO the worker itself holds open, so no end-of-file will come: only the
    orphan watch can stop it once its parent is SIGKILLed."""
    fifo = tmp_path / "requests"
    os.mkfifo(fifo)
    parent = subprocess.Popen(
        ["sh", "-c", f'exec 3<>"{fifo}"; "{sys.executable}" -m DuPLUSLib.worker --threads 1 <"{fifo}" & echo $!; wait'],
        stdout=subprocess.PIPE, text=True, env=worker_environment(threads=1),
    )
    try:
        worker_pid = int(parent.stdout.readline())
        time.sleep(1.0)
        assert not no_process_left(worker_pid)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + TIMEOUT_S  # generous: on a loaded machine the start-up alone is slow
        while not no_process_left(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert no_process_left(worker_pid), "the orphaned worker kept running"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_cancelled_request_is_reported_and_ends_the_worker_loop(input_path, model_dir, tmp_path):
    """What SIGTERM during a run does: the engine's cancel poll fires, nothing is written."""
    events: list[dict] = []
    worker = Worker(events.append, cancel=lambda: True)
    keep_going = worker.handle_request(request(input_path, model_dir, id="stop"))
    assert keep_going is False
    assert events[-1]["error"] == CancelledError.__name__
    assert not (tmp_path / "out.seg.nrrd").exists()


# --------------------------------------------------------------------------- the runner
def test_runner_goes_through_its_states_and_reports_done(runner, input_path, model_dir):
    recorder = Recorder()
    runner.submit(request(input_path, model_dir), recorder)
    assert runner.state in (RunnerState.STARTING, RunnerState.RUNNING)  # STARTING if not yet warm
    seen = set()
    deadline = time.monotonic() + TIMEOUT_S
    while runner.poll() and time.monotonic() < deadline:
        seen.add(runner.state)
        time.sleep(0.01)
    assert RunnerState.RUNNING in seen
    assert runner.state is RunnerState.IDLE
    kind, done = recorder.outcome()
    assert kind == "done" and Path(done["output"]).is_file()
    fractions = [e[2] for e in recorder.events if e[0] == "progress" and e[1] == "inference"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_warm_worker_serves_a_second_request_without_reloading(runner, input_path, model_dir, tmp_path):
    other_model = shutil.copytree(model_dir, tmp_path / "other-model")  # a model this worker has not loaded
    first = run_to_end(runner, request(input_path, other_model, name="first"))
    pid = runner.worker_pid
    second = run_to_end(runner, request(input_path, other_model, name="second"))
    assert first.outcome()[0] == "done" and second.outcome()[0] == "done"
    assert first.outcome()[1]["model_reused"] is False
    assert second.outcome()[1]["model_reused"] is True and second.outcome()[1]["model_load_s"] == 0
    assert runner.worker_pid == pid
    assert second.outcome()[1]["seconds"] < first.outcome()[1]["seconds"] + 1.0


def test_cold_runner_lets_the_worker_go_after_each_run(input_path, model_dir):
    runner = SegmentationRunner(threads=1, warm=False)
    try:
        recorder = Recorder()
        runner.submit(request(input_path, model_dir, prompts=["CT/abdomen/unicorn"]), recorder)
        pid = runner._worker.pid
        runner.wait(timeout_s=TIMEOUT_S)
        assert recorder.outcome()[0] == "error"
        assert runner.worker_pid is None and no_process_left(pid)
    finally:
        runner.shutdown()


def test_prestarted_worker_serves_the_first_request(fresh_runner, input_path, model_dir):
    runner = fresh_runner
    runner.prestart()
    pid = runner.worker_pid
    assert pid is not None and runner.state is RunnerState.IDLE
    outcome = run_to_end(runner, request(input_path, model_dir, prompts=["CT/abdomen/unicorn"])).outcome()
    assert outcome[0] == "error" and isinstance(outcome[1], UnknownPromptError)
    assert runner.worker_pid == pid


def test_cancel_mid_run_ends_the_whole_process_tree_and_writes_nothing(input_path, model_dir, tmp_path):
    """The worker is started through a launcher script (as Slicer's PythonSlicer launcher does), so
    killing only the direct child would leave the real worker running."""
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\necho launcher-done\n', encoding="utf-8")
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    runner = SegmentationRunner(python=str(launcher), threads=1)
    try:
        recorder = Recorder()
        runner.submit(request(input_path, model_dir), recorder)
        launcher_pid = runner._worker.pid
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e[0] == "progress" for e in recorder.events) and time.monotonic() < deadline:
            runner.poll()
            time.sleep(0.01)
        tree = [p.pid for p in psutil.Process(launcher_pid).children(recursive=True)]
        assert tree, "the launcher should have started the worker as its child"
        runner.cancel()
        assert runner.state is RunnerState.IDLE and recorder.outcome() == ("cancelled",)
        assert all(no_process_left(pid) for pid in [launcher_pid, *tree])
        assert not (tmp_path / "out.seg.nrrd").exists()
        assert not any(e[0] == "done" for e in recorder.events)
    finally:
        runner.shutdown()


def test_next_request_after_a_cancel_starts_a_fresh_worker(fresh_runner, input_path, model_dir):
    runner = fresh_runner
    recorder = Recorder()
    runner.submit(request(input_path, model_dir, name="cancelled"), recorder)
    first_pid = runner._worker.pid
    runner.cancel()
    again = run_to_end(runner, request(input_path, model_dir, name="again", prompts=["CT/abdomen/unicorn"]))
    assert again.outcome()[0] == "error" and isinstance(again.outcome()[1], UnknownPromptError)
    assert runner.worker_pid != first_pid and no_process_left(first_pid)


def test_a_worker_that_dies_gives_a_clear_error(fresh_runner, input_path, model_dir):
    runner = fresh_runner
    recorder = Recorder()
    runner.submit(request(input_path, model_dir), recorder)
    assert runner.state is RunnerState.STARTING
    pid = runner._worker.pid
    deadline = time.monotonic() + TIMEOUT_S
    while not recorder.events and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    runner.wait(timeout_s=30)
    kind, error = recorder.outcome()
    assert kind == "error" and isinstance(error, WorkerError)
    assert "was killed (signal 9)" in str(error) and "nothing was imported" in str(error)
    assert runner.state is RunnerState.IDLE


def test_a_worker_that_cannot_start_is_reported(input_path, model_dir, tmp_path):
    runner = SegmentationRunner(python=str(tmp_path / "no-such-python"))
    with pytest.raises(WorkerError, match="cannot start the background worker"):
        runner.submit(request(input_path, model_dir))
    assert runner.state is RunnerState.IDLE


def test_only_one_run_at_a_time(fresh_runner, input_path, model_dir):
    runner = fresh_runner
    runner.submit(request(input_path, model_dir), Recorder())
    with pytest.raises(WorkerError, match="already"):
        runner.submit(request(input_path, model_dir, name="second"))
    runner.cancel()


# --------------------------------------------------------------------------- bad requests
def error_of(runner, message) -> BaseException:
    kind, error = run_to_end(runner, message).outcome()
    assert kind == "error"
    return error


def test_unknown_prompt_comes_back_as_its_error_class(runner, input_path, model_dir):
    error = error_of(runner, request(input_path, model_dir, prompts=["CT/abdomen/unicorn"]))
    assert isinstance(error, UnknownPromptError) and "choose one of" in str(error)


def test_missing_model_folder_is_a_model_error(runner, input_path, tmp_path):
    error = error_of(runner, request(input_path, tmp_path / "nowhere"))
    assert isinstance(error, ModelBundleError) and "does not exist" in str(error)


def test_corrupt_model_weights_are_refused(runner, input_path, model_dir, tmp_path):
    tampered = shutil.copytree(model_dir, tmp_path / "tampered")
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    error = error_of(runner, request(input_path, tampered))
    assert isinstance(error, ModelBundleError) and "sha256" in str(error)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpu_asked_where_none_is_a_device_error(runner, input_path, model_dir):
    error = error_of(runner, request(input_path, model_dir, device="cuda"))
    assert isinstance(error, DeviceError) and "cpu" in str(error).lower()


def test_worker_keeps_serving_after_a_refused_request(runner, input_path, model_dir):
    error_of(runner, request(input_path, model_dir, prompts=["CT/abdomen/unicorn"]))
    pid = runner.worker_pid
    assert run_to_end(runner, request(input_path, model_dir)).outcome()[0] == "done"
    assert runner.worker_pid == pid


def test_unreadable_input_is_an_input_error(runner, model_dir, tmp_path):
    bad = tmp_path / "broken.nrrd"
    bad.write_text("not an image", encoding="utf-8")
    error = error_of(runner, request(bad, model_dir))
    assert type(error).__name__ == "InputImageError"


def test_segmentation_masks_are_not_empty_for_a_confident_model(runner, input_path, model_dir):
    kind, done = run_to_end(runner, request(input_path, model_dir)).outcome()
    assert kind == "done"
    report = json.loads(Path(done["report"]).read_text(encoding="utf-8"))
    assert [s["structure"] for s in report["segments"]] == ["liver", "spleen"]
    assert np.isfinite([s["volume_ml"] for s in report["segments"]]).all()


def test_an_error_event_becomes_the_library_exception_it_names_wherever_that_is_defined():
    from DuPLUSLib.errors import UnknownPromptError
    from DuPLUSLib.segment_process import WorkerError, error_from_event
    from DuPLUSLib.training.decathlon import DatasetError

    assert isinstance(error_from_event({"error": "UnknownPromptError", "message": "m"}), UnknownPromptError)
    dataset = error_from_event({"error": "DatasetError", "message": "dataset.json names imagesTr/x.nii.gz"})
    assert type(dataset) is DatasetError and str(dataset) == "dataset.json names imagesTr/x.nii.gz"
    foreign = error_from_event({"error": "KeyError", "message": "'spacing'"})  # not a library error
    assert type(foreign) is WorkerError and str(foreign) == "KeyError: 'spacing'"


def test_a_request_the_worker_cannot_take_is_raised_once_and_not_also_delivered(input_path, model_dir, tmp_path):
    """A worker that closed its input: submit raises, and the error callback stays silent, so the
    module shows one error dialog, not two."""
    launcher = tmp_path / "deaf.sh"
    closed = tmp_path / "stdin-closed"
    launcher.write_text(f"#!/bin/sh\nexec 0<&-\ntouch '{closed}'\nsleep 30\n", encoding="utf-8")
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    runner = SegmentationRunner(python=str(launcher), threads=1, warm=True)
    try:
        recorder = Recorder()
        runner.prestart()
        deadline = time.monotonic() + TIMEOUT_S
        while not closed.exists() and time.monotonic() < deadline:  # the worker has closed its input
            time.sleep(0.01)
        with pytest.raises(WorkerError):
            runner.submit(request(input_path, model_dir), recorder)
        assert not [e for e in recorder.events if e[0] == "error"]
        assert runner.state is RunnerState.IDLE
    finally:
        runner.shutdown()
