"""One background runner for both modules: prognosis as a request kind, ends without psutil, errors by registry.

Slicer bundles no psutil; the runner must still end the worker's whole process tree, and a worker
that dies must end in a clear error, never a hang or an exception out of the GUI's poll timer.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import signal
import sys
import time

import pytest

import DuPLUSLib
from DuPLUSLib.errors import ERROR_MODULES, DuPLUSError, MissingDependencyError, error_class
from DuPLUSLib.segment_process import (BackgroundRunner, RunCallbacks, RunnerState, WorkerError, WorkerProcess,
                                       error_from_event)
from DuPLUSLib.worker import Worker

TIMEOUT_S = 60


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie), without psutil."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def no_psutil(monkeypatch):
    """This process as inside Slicer: ``import psutil`` fails."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(ImportError):
        import psutil  # noqa: F401


@pytest.mark.skipif(os.name == "nt" or not os.path.isdir("/proc"), reason="reads /proc")
def test_without_psutil_cancel_still_ends_the_worker_and_what_it_started(no_psutil):
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(60)\n")
    worker = WorkerProcess([sys.executable, "-c", script])
    worker.start()
    kind, line = worker.events.get(timeout=TIMEOUT_S)
    child = int(line)
    assert kind == "log" and alive(worker.pid) and alive(child)
    worker.kill_tree(grace_s=0.5)
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker.pid) and not alive(child)


def prognosis_request(tmp_path, **extra) -> dict:
    return {"kind": "prognosis", "ehr": {"age": 58, "stage": "II"}, "report": str(tmp_path / "report.json"), **extra}


def test_without_psutil_a_dead_prognosis_worker_ends_in_a_clear_error_without_hanging(no_psutil, tmp_path):
    runner = BackgroundRunner(threads=1, job_name="prediction")
    seen: dict[str, list] = {"progress": [], "error": [], "done": []}
    runner.submit(prognosis_request(tmp_path), RunCallbacks(
        on_progress=lambda stage, fraction, message: seen["progress"].append(stage),
        on_error=seen["error"].append, on_done=seen["done"].append))
    deadline = time.monotonic() + TIMEOUT_S
    while not seen["progress"] and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.02)
    assert seen["progress"] == ["loading"], "the worker never started the prediction"
    pid = runner.worker_pid
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    runner.wait(timeout_s=20)  # polling must not raise; the death must be noticed promptly
    assert time.monotonic() - started < 10
    assert seen["done"] == [] and len(seen["error"]) == 1
    error = seen["error"][0]
    assert isinstance(error, WorkerError) and "was killed" in str(error) and "prediction" in str(error)
    assert runner.state is RunnerState.IDLE and runner.worker_pid is None and not alive(pid)
    assert not (tmp_path / "report.json").exists()


def test_cancel_without_psutil_ends_the_prediction_at_once(no_psutil, tmp_path):
    runner = BackgroundRunner(threads=1, job_name="prediction")
    outcome = []
    runner.submit(prognosis_request(tmp_path), RunCallbacks(on_cancelled=lambda: outcome.append("cancelled"),
                                                            on_error=outcome.append, on_done=outcome.append))
    pid = runner._worker.pid
    runner.cancel()
    assert outcome == ["cancelled"] and not alive(pid) and not runner.busy
    runner.poll()
    assert outcome == ["cancelled"]


# ----------------------------------------------------------------------------- the protocol
def serve(request: dict) -> list[dict]:
    events: list[dict] = []
    Worker(events.append).handle_line(json.dumps(request))
    return events


def test_a_bad_form_is_refused_by_the_worker_with_its_class_before_torch_loads(tmp_path):
    (event,) = serve(prognosis_request(tmp_path, ehr={"age": 58, "stage": "VII"}, id="7"))
    assert event["event"] == "error" and event["id"] == "7" and event["error"] == "EHRValidationError"
    error = error_from_event(event)
    assert type(error).__name__ == "EHRValidationError" and "unknown overall stage 'VII'" in str(error)


def test_a_column_the_model_does_not_have_is_refused_by_the_worker_naming_it(tmp_path):
    """The form's values beyond the EHR schema are checked against the model's saved columns (the
    bundled larynx model has none): a stray column is named, not silently dropped."""
    (event,) = serve(prognosis_request(tmp_path, ehr={"age": 58, "stage": "II", "crp": "12"}, id="8"))
    assert event["error"] == "EHRValidationError" and "unknown field(s) 'crp'" in event["message"]
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("request_, message", [
    ({"kind": "radiomics"}, "unknown request kind 'radiomics'; choose one of: segment, prognosis"),
    ({"kind": "prognosis", "report": "r.json"}, "request lacks ehr"),
    ({"kind": "prognosis", "ehr": {"age": 1}, "report": "r.json", "prompts": []}, "unknown field(s): prompts"),
    ({"kind": "prognosis", "ehr": "age 60", "report": "r.json"}, "'ehr' must be an object"),
])
def test_malformed_requests_are_refused_by_kind(request_, message):
    (event,) = serve(request_)
    assert event["error"] == "ProtocolError" and message in event["message"]


def test_a_package_missing_in_the_worker_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "DuPLUSLib.prognosis.bundle", None)  # as if torch could not be imported
    *progress, event = serve(prognosis_request(tmp_path))
    assert [e["stage"] for e in progress] == ["loading"]
    assert event["error"] == "MissingDependencyError" and "lacks the package" in event["message"]
    assert isinstance(error_from_event(event), MissingDependencyError)


# ----------------------------------------------------------------------------- the error registry
def all_library_errors() -> dict[str, type]:
    pytest.importorskip("slicer", reason="DuPLUSLib.slicer and mrml need the slicer-core wheel")
    for module in pkgutil.walk_packages(DuPLUSLib.__path__, "DuPLUSLib."):
        importlib.import_module(module.name)
    found, pending = {}, [DuPLUSError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("DuPLUSLib."):
            found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def test_every_library_error_is_in_the_registry_and_resolves_to_itself():
    errors = all_library_errors()
    assert set(errors) == set(ERROR_MODULES), "register new error classes in DuPLUSLib.errors.ERROR_MODULES"
    for name, cls in errors.items():
        assert error_class(name) is cls and ERROR_MODULES[name] == cls.__module__


def test_an_error_that_is_not_registered_arrives_as_worker_error_text():
    error = error_from_event({"error": "KeyError", "message": "'spacing'"})
    assert type(error) is WorkerError and str(error) == "KeyError: 'spacing'"
    assert error_class("Exception") is None and error_class("SystemExit") is None
