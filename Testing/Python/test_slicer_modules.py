"""The module files' own behaviour that runs headless: self-tests that skip, and a closing scene.

The widgets are built without Qt (the stand-in base classes) and given plain stand-ins for the
``.ui`` widgets and the poll timer: enough to run the code paths a scene close takes. The logic
and its background worker are real, on a real MRML scene.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
import unittest

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
DuPLUSSegment = pytest.importorskip("DuPLUSSegment")
DuPLUSPrognosis = pytest.importorskip("DuPLUSPrognosis")

from DuPLUSLib.errors import CancelledError  # noqa: E402
from DuPLUSLib.segment_process import RunnerState  # noqa: E402


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------- self-tests
@pytest.fixture
def build_farm(monkeypatch):
    """A Python without torch, MONAI and transformers, like Slicer's build farm."""
    real = importlib.util.find_spec
    absent = {"torch", "monai", "transformers"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name in absent else real(name, *a, **k))


def run_self_test(test_class) -> unittest.TestResult:
    suite = unittest.TestLoader().loadTestsFromTestCase(test_class)  # what slicer.testing.runUnitTest does
    result = unittest.TestResult()
    suite.run(result)
    return result


@pytest.mark.parametrize("module, skipped, ran, missing", [
    ("DuPLUSSegment", "test_SegmentSampleVolume", "test_BadInputsAreRefusedBeforeAnyWork", "torch, monai, transformers"),
    ("DuPLUSPrognosis", "test_PredictAndShowReadout", "test_ImpossibleAgeIsRefused", "torch, transformers"),
])
def test_self_tests_skip_with_the_reason_where_the_engine_is_missing(build_farm, mrml_scene, module, skipped, ran, missing):
    test_class = getattr(sys.modules[module], f"{module}Test")
    result = run_self_test(test_class)
    assert result.errors == [] and result.failures == [], result.errors + result.failures
    assert result.testsRun == 2
    ((test, reason),) = result.skipped
    assert test._testMethodName == skipped
    assert reason.startswith(f"needs {missing}, not installed in this Slicer")


def test_reload_and_test_reports_skips_and_runs_the_rest(build_farm, mrml_scene):
    test = DuPLUSPrognosis.DuPLUSPrognosisTest()
    calls = []
    test.setUp = lambda: calls.append("setUp")
    from DuPLUSLib.slicer import self_test

    skipped = self_test.run_each(test, [test.test_PredictAndShowReadout, test.test_ImpossibleAgeIsRefused])
    assert calls == ["setUp", "setUp"]  # before each test, not once for all
    assert len(skipped) == 1 and "test_PredictAndShowReadout skipped: needs torch, transformers" in skipped[0]


# ----------------------------------------------------------------------------- a closing scene
class Timer:
    def __init__(self):
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class Runner:
    """A runner that is mid-run until cancelled."""

    def __init__(self):
        self.warm, self.state, self.cancelled = True, RunnerState.RUNNING, 0
        self.busy, self.elapsed_s, self.worker_pid = True, 1.0, None

    def poll(self):
        return self.busy

    def cancel(self):
        self.cancelled += 1
        self.busy, self.state = False, RunnerState.IDLE

    def shutdown(self):
        self.cancel()


def label():
    return types.SimpleNamespace(text="", enabled=True, toolTip="", value=0)


@pytest.mark.parametrize("module", ["DuPLUSSegment", "DuPLUSPrognosis"])
def test_a_timer_tick_after_the_scene_closed_does_nothing(mrml_scene, module):
    """Closing the scene mid-run: the run is cancelled, the timer stops, and a tick already queued
    touches nothing (it used to raise AttributeError on the None parameter node each tick)."""
    mod = sys.modules[module]
    widget = getattr(mod, f"{module}Widget")()
    runner = Runner()
    widget.logic = getattr(mod, f"{module}Logic")(runner=runner)
    widget.pollTimer = Timer()
    widget.ui = types.SimpleNamespace(applyButton=label(), predictButton=label(), cancelButton=label(),
                                      statusLabel=label(), elapsedLabel=label(), promptSummaryLabel=label())
    widget.setParameterNode = lambda node: setattr(widget, "_parameterNode", node)  # connectGui needs Qt
    widget._parameterNode = types.SimpleNamespace()  # the wrapped parameter node needs Slicer
    widget.pollTimer.start()
    widget.onSceneStartClose()
    assert runner.cancelled == 1 and not widget.pollTimer.active and widget._parameterNode is None
    widget.pollTimer.start()  # a tick that was already on its way
    widget.onPollTimer()
    assert not widget.pollTimer.active


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_closing_the_scene_during_a_prediction_cancels_it_and_leaves_no_process(mrml_scene):
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic(threads=1)
    outcome = []
    try:
        logic.predictAsync({"age": 70, "stage": "IV"}, onFinished=outcome.append, onError=outcome.append,
                           onCancelled=lambda: outcome.append("cancelled"))
        pid = logic.runner._worker.pid
        folder = logic._folder
        assert logic.isBusy and alive(pid)
        mrml_scene.Clear(0)  # File > Close Scene
        assert outcome == ["cancelled"] and not logic.isBusy
        assert isinstance(logic.lastError, CancelledError)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid) and not os.path.exists(folder)
        assert logic.poll() is False and outcome == ["cancelled"]
        mrml_scene.Clear(0)  # after the run, a close is none of the logic's business
        assert outcome == ["cancelled"]
    finally:
        logic.shutdown()


def test_the_segment_request_is_parsed_and_checked_once(mrml_scene):
    from DuPLUSLib import cascade, mrml
    from DuPLUSLib.errors import OutputPathError, UnknownPromptError
    from DuPLUSLib.imageio import VolumeImage

    logic = DuPLUSSegment.DuPLUSSegmentLogic(runner=Runner())
    logic.runner.busy, logic.runner.state = False, RunnerState.IDLE
    array = np.random.default_rng(0).integers(-1000, 1000, (8, 9, 10)).astype(np.int16)
    volume = mrml.volume_node_from_image(VolumeImage(array, spacing=(1.0, 1.0, 2.0)), "ct", mrml_scene)
    output = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.GetSegmentation().AddEmptySegment("drawn", "Liver")
    prompts = cascade.compose("CT", "abdomen", ["liver", "spleen"])
    request = logic.prepare(volume, prompts, output)
    assert request.prompts == tuple(prompts)  # the parsed prompts are passed on, not parsed again
    from DuPLUSLib.ontology import load_ontology

    assert all(a is b for a, b in zip(load_ontology().parse_many(prompts), prompts))  # later steps pass them through
    assert request.segment_names == ("liver", "spleen") and request.clashes == ("liver",)  # names compare case-blind
    assert request.worker_message(__import__("pathlib").Path("/w"))["prompts"] == ["CT/abdomen/liver", "CT/abdomen/spleen"]
    with pytest.raises(OutputPathError, match="already has segment"):
        logic.submit(request)
    with pytest.raises(UnknownPromptError, match="no structure chosen"):
        logic.prepare(volume, [])


@pytest.mark.slow
@pytest.mark.parametrize("module", ["DuPLUSPrognosis", "DuPLUSSegment"])
def test_self_tests_pass_where_the_engine_is_installed(mrml_scene, module):
    """The self-tests as Slicer's ctest runs them, with the real engine (the bundled models)."""
    result = run_self_test(getattr(sys.modules[module], f"{module}Test"))
    assert result.errors == [] and result.failures == [] and result.skipped == [], result.errors + result.failures
    assert result.testsRun == 2
