"""Prediction in a background process, for the Slicer module: start, poll, cancel; no Qt.

The Slicer GUI must not freeze while torch and the text encoder load (seconds) or image features
are computed (longer), so the module runs ``python -m DuPLUSLib.cli prognosis predict ... --progress
json`` the way DuPLUS Segment runs its worker: :class:`~DuPLUSLib.segment_process.WorkerProcess`
starts it in its own process group, reads its JSON lines on a thread into a queue, and ends the whole
process tree on cancel. :meth:`PredictionRun.poll` is called from a ``qt.QTimer`` in Slicer, or in a
loop by :meth:`PredictionRun.wait` in scripts and tests.
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import CancelledError, DuPLUSError
from ..segment_process import WorkerError, WorkerProcess, default_python, error_from_event, worker_environment
from .cohort import CohortError  # noqa: F401  imported so that error_from_event knows the classes
from .ehr import EHRValidationError  # noqa: F401  the prediction process may report
from .image_features import NoTumourError  # noqa: F401

__all__ = ["PredictionState", "PredictionRun", "predict_command"]


class PredictionState(str, Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def predict_command(folder: Path, model: str | None = None, image: str | None = None,
                    segmentation: str | None = None, python: str | None = None) -> list[str]:
    """The ``duplus prognosis predict`` command line reading ``folder/ehr.json``, writing report and plot there."""
    command = [python or default_python(), "-u", "-m", "DuPLUSLib.cli", "prognosis", "predict",
               "--ehr", str(folder / "ehr.json"), "--report", str(folder / "report.json"),
               "--plot", str(folder / "km.png"), "--progress", "json", "--overwrite"]
    if model:
        command += ["--model", str(model)]
    if image:
        command += ["--image", str(image), "--segmentation", str(segmentation)]
    return command


@dataclass
class PredictionRun:
    """One prediction process and what it has said so far."""

    folder: Path
    command: list[str]
    env: dict[str, str] | None = None
    state: PredictionState = PredictionState.RUNNING
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    log: list[str] = field(default_factory=list)
    started: float = 0.0
    _process: WorkerProcess | None = None

    @classmethod
    def start(cls, folder: str | Path, ehr: dict[str, Any], model: str | None = None, image: str | None = None,
              segmentation: str | None = None, python: str | None = None, env: dict[str, str] | None = None,
              threads: int = 2) -> "PredictionRun":
        """Write the EHR beside the inputs and launch the process."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ehr.json").write_text(json.dumps(ehr), encoding="utf-8")
        run = cls(folder, predict_command(folder, model, image, segmentation, python),
                  worker_environment(env, threads))
        run.started = time.monotonic()
        run._process = WorkerProcess(run.command, run.env)
        run._process.start()
        return run

    def poll(self) -> PredictionState:
        """Drain the process's events; returns the state (call until it is no longer RUNNING)."""
        if self.state is not PredictionState.RUNNING or self._process is None:
            return self.state
        while True:
            try:
                kind, payload = self._process.events.get_nowait()
            except queue.Empty:
                return self.state
            if kind == "log":
                self.log.append(str(payload))
            elif kind == "event" and payload.get("event") == "done":
                self.result = payload
                self.state = PredictionState.DONE
            elif kind == "event" and payload.get("event") == "error":
                self.error = error_from_event(payload)
                self.state = PredictionState.FAILED
            elif kind == "eof":
                self._process.kill_tree(grace_s=0.5)
                if self.state is PredictionState.RUNNING:
                    tail = "; ".join(self._process.stderr_tail(4)) or "no message"
                    self.error = WorkerError(f"the prediction process stopped without a result: {tail}")
                    self.state = PredictionState.FAILED
                return self.state

    def wait(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Block until done; returns the ``done`` event or raises the error the process reported."""
        end = time.monotonic() + timeout_s
        while self.poll() is PredictionState.RUNNING:
            if time.monotonic() > end:
                self.cancel()
                raise WorkerError(f"the prediction took longer than {timeout_s:.0f} s and was stopped")
            time.sleep(0.05)
        if self.state is PredictionState.DONE:
            return self.result
        raise self.error if isinstance(self.error, DuPLUSError) else WorkerError(str(self.error))

    def cancel(self) -> None:
        """End the process and everything it started; nothing it was writing is kept."""
        if self._process is not None:
            self._process.kill_tree(grace_s=0.5)
        if self.state is PredictionState.RUNNING:
            self.state = PredictionState.CANCELLED
            self.error = CancelledError("prediction cancelled")
