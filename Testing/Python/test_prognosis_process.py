"""Prediction in a background process (what the Slicer module runs): result, error and cancel."""

import os
import sys

import psutil
import pytest

from DuPLUSLib.errors import CancelledError
from DuPLUSLib.prognosis.ehr import EHRValidationError
from DuPLUSLib.prognosis.process import PredictionRun, PredictionState, predict_command


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_the_command_is_duplus_prognosis_predict_with_json_progress(tmp_path):
    command = predict_command(tmp_path, model="m", image="ct.nrrd", segmentation="t.seg.nrrd", python="py")
    assert command[:6] == ["py", "-u", "-m", "DuPLUSLib.cli", "prognosis", "predict"]
    assert command[command.index("--progress") + 1] == "json" and "--segmentation" in command


def test_a_background_prediction_returns_the_readout(tmp_path):
    run = PredictionRun.start(tmp_path, {"age": 58, "stage": "II"}, python=sys.executable, env=_env(), threads=1)
    done = run.wait(timeout_s=120)
    assert run.state is PredictionState.DONE
    assert done["readout"]["sentence"] == "A 58-year-old patient with cancer, stage II."
    assert (tmp_path / "report.json").is_file() and (tmp_path / "km.png").is_file()


def test_an_error_in_the_process_reaches_the_caller_with_its_class_and_message(tmp_path):
    run = PredictionRun.start(tmp_path, {"age": 58, "stage": "VII"}, python=sys.executable, env=_env(), threads=1)
    with pytest.raises(EHRValidationError, match="unknown overall stage 'VII'"):
        run.wait(timeout_s=120)
    assert run.state is PredictionState.FAILED and not (tmp_path / "report.json").exists()


def test_cancel_ends_the_process_and_writes_nothing(tmp_path):
    run = PredictionRun.start(tmp_path, {"age": 58}, python=sys.executable, env=_env(), threads=1)
    pid = run._process.pid
    run.cancel()
    assert run.state is PredictionState.CANCELLED and isinstance(run.error, CancelledError)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / "report.json").exists()
