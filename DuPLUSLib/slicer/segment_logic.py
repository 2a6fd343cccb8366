"""DuPLUS Segment's logic: volume node in, segmentation node out, the work done in the background.

The module file (``DuPLUSSegment.py``) wires its GUI to :class:`SegmentLogic`; scripts and tests
use the logic directly. The path of one run, each step done once:

1. :meth:`SegmentLogic.prepare` checks everything that can be checked before the long work (the
   volume, the prompts, the model folder) and returns a :class:`SegmentRequest`: the prompts parsed
   once, and the segments of the output the run would replace;
2. :meth:`SegmentLogic.submit` writes the volume to a file and hands the request to the runner
   (:class:`~DuPLUSLib.segment_process.BackgroundRunner` unless another is given: the logic takes
   its runner as a constructor argument);
3. :meth:`SegmentLogic.poll` delivers the runner's news; the result is imported through
   :mod:`DuPLUSLib.mrml`.

While a run goes, the logic observes the input's scene: closing the scene cancels the run (the
worker's process tree ends, nothing is imported) instead of leaving it to import into nothing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import slicer

from .. import cascade, mrml
from ..errors import CancelledError, InputImageError, ModelBundleError, OutputPathError, UnknownPromptError
from ..imageio import VolumeImage, write_image
from ..ontology import Prompt, load_ontology
from ..postprocessing import dropped_parts_warning
from ..progress import Stage
from ..remote import RemoteRunner, ServerClient
from ..scripted_module import IN_SLICER_APPLICATION, ScriptedLoadableModuleLogic, qt
from ..segment_process import BackgroundRunner, RunCallbacks, RunnerState, WorkerError
from .dicom import dicom_tags
from .install import SEGMENT_REQUIREMENTS, TORCH, DependencyInstaller, missing_requirements
from .scene_watch import CancelOnSceneClose
from .server_connection import ServerConnection

__all__ = ["JobRunner", "SegmentLogic", "SegmentRequest", "describe_segments"]

MODULE_NAME = "DuPLUSSegment"


class JobRunner(Protocol):
    """What the logic needs from its runner (:class:`BackgroundRunner`, or another, e.g. remote)."""

    warm: bool
    state: RunnerState

    @property
    def busy(self) -> bool: ...

    @property
    def elapsed_s(self) -> float: ...

    @property
    def worker_pid(self) -> int | None: ...

    def prestart(self) -> None: ...

    def submit(self, request: dict[str, Any], callbacks: RunCallbacks | None = None) -> str: ...

    def poll(self) -> bool: ...

    def wait(self, timeout_s: float | None = None, interval_s: float = 0.05,
             between_polls: Callable[[], None] | None = None) -> None: ...

    def cancel(self) -> None: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class SegmentRequest:
    """One checked Segment request: what the worker is asked, and what the import needs."""

    volume_node: Any
    image: VolumeImage
    prompts: tuple[Prompt, ...]
    segment_names: tuple[str, ...]
    clashes: tuple[str, ...]  # segments of segmentation_node this run would replace
    segmentation_node: Any = None
    replace: bool = False
    device: str = "auto"
    model: str | None = None
    show_3d: bool = False

    def worker_message(self, folder: Path) -> dict[str, Any]:
        """The worker protocol's ``segment`` request, reading and writing in ``folder``."""
        return {
            "kind": "segment",
            "input": str(folder / "input.nrrd"),
            "prompts": [p.key for p in self.prompts],
            "output": str(folder / "result.seg.nrrd"),
            "report": str(folder / "result.json"),
            "model": self.model or None,
            "device": self.device or "auto",
        }


class SegmentLogic(ServerConnection, CancelOnSceneClose, ScriptedLoadableModuleLogic):
    """Volume node in, segmentation node out, the work done by the background worker.

    Blocking (console, scripts, tests)::

        segmentation = logic.segment(volumeNode, ["CT/abdomen/liver"])

    Non-blocking (the module's GUI)::

        logic.segmentAsync(volumeNode, prompts, onProgress=..., onFinished=..., onError=...)

    then ``logic.poll()`` from a timer; in the Slicer application the logic starts that timer
    itself unless told not to. Errors are the library's (:mod:`DuPLUSLib.errors`): ``InputImageError``
    for a bad input volume, ``UnknownPromptError`` (also for no prompt at all), ``ModelBundleError``,
    ``DeviceError``, ``OutputPathError`` for segments that would be overwritten, ``WorkerError`` for
    a worker that could not start, died, or is already busy. On any error or cancel the scene is
    left as it was.

    With ``server="https://..."`` (and ``apiKey``) a run goes to a DuPLUS server (``duplus serve``)
    through :class:`~DuPLUSLib.remote.RemoteRunner` instead of the local runner: the same callbacks,
    stages, errors (``ServerError``, a ``WorkerError``, for a server that cannot be reached or stops
    answering; ``AuthenticationError`` for the key) and import; Slicer needs no PyTorch for it.
    """

    def __init__(self, runner: JobRunner | None = None, warm: bool = True, python: str | None = None,
                 threads: int = 0, installer: DependencyInstaller | None = None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleName = MODULE_NAME  # the parameter node's singleton tag, whatever the subclass is called
        if runner is None:
            environment = _startup_environment()
            runner = BackgroundRunner(python=python, env=environment, warm=warm, threads=threads, job_name="segmentation")
        self.localRunner = runner
        self.runner = runner  # the runner of the current or last run: the local one, or a RemoteRunner
        self.remoteLostAfterSeconds = 15.0  # a server silent this long during a run is reported as gone
        self.installer = installer or DependencyInstaller(SEGMENT_REQUIREMENTS, requester="DuPLUS Segment")
        self.lastRunSeconds = 0.0
        self.lastReport: dict | None = None
        self._workFolder: str | None = None
        self._timer = None
        self._sceneWatch: tuple[Any, int] | None = None

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> RunnerState:
        return self.runner.state

    @property
    def isBusy(self) -> bool:
        return self.runner.busy

    @property
    def segmentsToCheck(self) -> list[str]:
        """The last run's segments whose model kept only the largest part, beside removed parts large
        enough that the kept one may be the wrong one (the log says more)."""
        return [entry["name"] for entry in (self.lastReport or {}).get("segments", []) if entry.get("check")]

    @property
    def elapsedSeconds(self) -> float:
        return self.runner.elapsed_s

    @property
    def workerPid(self) -> int | None:
        return self.runner.worker_pid

    def prestartWorker(self) -> bool:
        """Start the background process ahead of the first Segment (only when its packages are
        installed: nothing is installed or asked here). Returns whether a worker is running."""
        if self.missingDependencies():
            return False
        try:
            self.localRunner.prestart()
        except WorkerError as error:
            logging.warning(f"DuPLUS Segment: {error}")
            return False
        return self.localRunner.worker_pid is not None

    def setWarm(self, warm: bool) -> None:
        """Keep the worker (and its loaded model) between runs, or let it go after each."""
        self.localRunner.warm = warm

    # ------------------------------------------------------------------ console API
    def segment(self, volumeNode, prompts: Sequence[str | Prompt], segmentationNode=None, replace: bool = False,
                device: str = "auto", model: str | None = None, showIn3D: bool = False,
                timeout: float | None = None, server: str | None = None, apiKey: str | None = None):
        """Segment and return the segmentation node; blocks until done (the GUI keeps painting).

        ``server``: the address of a DuPLUS server to run on instead of this computer, ``apiKey`` its
        key; the server chose its model and device when it started.
        """
        outcome: dict = {}
        self.segmentAsync(
            volumeNode, prompts, segmentationNode=segmentationNode, replace=replace, device=device, model=model,
            showIn3D=showIn3D,
            onFinished=lambda node: outcome.setdefault("node", node),
            onError=lambda error: outcome.setdefault("error", error),
            onCancelled=lambda: outcome.setdefault("error", CancelledError("segmentation cancelled")),
            startTimer=False, server=server, apiKey=apiKey,
        )
        processEvents = _process_events()
        self.runner.wait(timeout_s=timeout, between_polls=processEvents)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["node"]

    def segmentAsync(self, volumeNode, prompts: Sequence[str | Prompt], segmentationNode=None, replace: bool = False,
                     device: str = "auto", model: str | None = None, showIn3D: bool = False,
                     onProgress: Callable[[str, float, str], None] | None = None,
                     onLog: Callable[[str], None] | None = None,
                     onFinished: Callable[[object], None] | None = None,
                     onError: Callable[[BaseException], None] | None = None,
                     onCancelled: Callable[[], None] | None = None,
                     startTimer: bool = True, server: str | None = None, apiKey: str | None = None) -> str:
        """Start segmenting and return at once; the callbacks report the outcome.

        Everything that can be checked before the long work is checked here and raised at once
        (see :meth:`prepare`); segments that would be overwritten raise ``OutputPathError`` unless
        ``replace``. The callbacks run on the thread that calls :meth:`poll`.
        """
        request = self.prepare(volumeNode, prompts, segmentationNode, replace, device, model, showIn3D)
        return self.submit(request, onProgress=onProgress, onLog=onLog, onFinished=onFinished, onError=onError,
                           onCancelled=onCancelled, startTimer=startTimer, server=server, apiKey=apiKey)

    def prepare(self, volumeNode, prompts: Sequence[str | Prompt], segmentationNode=None, replace: bool = False,
                device: str = "auto", model: str | None = None, showIn3D: bool = False) -> SegmentRequest:
        """Check the inputs and parse the prompts, once; nothing is started or written.

        Prompts may be text (parsed here) or :class:`Prompt` objects already parsed (by
        :func:`DuPLUSLib.cascade.compose`). The request lists the segments it would replace in
        ``segmentationNode``; ask the user about them, then pass ``dataclasses.replace(request,
        replace=True)`` to :meth:`submit`.
        """
        if self.isBusy:
            raise WorkerError("a segmentation is already running; wait for it or cancel it")
        image = mrml.volume_image_from_node(volumeNode)
        ontology = load_ontology()
        parsed = {p.key: p for p in ontology.parse_many(prompts)}
        if not parsed:
            raise UnknownPromptError("no structure chosen: give at least one prompt")
        if model and not Path(model).is_dir():
            raise ModelBundleError(f"model folder '{model}' does not exist")
        names = tuple(ontology.structures[p.structure].name for p in parsed.values())
        mrml.check_output_segmentation(segmentationNode, volumeNode)
        clashes = tuple(mrml.clashing_segment_names(segmentationNode, names))
        return SegmentRequest(volumeNode, image, tuple(parsed.values()), names, clashes, segmentationNode,
                              replace, device or "auto", model or None, showIn3D)

    def submit(self, request: SegmentRequest,
               onProgress: Callable[[str, float, str], None] | None = None,
               onLog: Callable[[str], None] | None = None,
               onFinished: Callable[[object], None] | None = None,
               onError: Callable[[BaseException], None] | None = None,
               onCancelled: Callable[[], None] | None = None,
               startTimer: bool = True, server: str | None = None, apiKey: str | None = None) -> str:
        """Write the input and hand a prepared request to the runner (the local one, or one for
        ``server``); returns the request id."""
        if request.clashes and not request.replace:
            raise OutputPathError(
                f"segmentation '{request.segmentation_node.GetName()}' already has segment(s) "
                f"{', '.join(request.clashes)}; choose a new output segmentation, or confirm replacing them"
            )
        if self.isBusy:
            raise WorkerError("a segmentation is already running; wait for it or cancel it")
        runner = self._runnerFor(server, apiKey, request.model)
        folder = Path(tempfile.mkdtemp(prefix="duplus-"))  # short path: long ones break some readers
        self._workFolder = str(folder)
        started = time.monotonic()
        try:
            write_image(request.image, folder / "input.nrrd")
        except Exception:
            self._cleanUp(str(folder))
            raise

        def finished(event: dict) -> None:
            if onProgress:
                onProgress(Stage.IMPORTING.value, 0.0, "importing the segments")
            node = self._importResult(event, request)
            self.lastRunSeconds = time.monotonic() - started
            self.lastReport = event
            if onLog:
                for line in describe_segments(event):
                    onLog(line)
            self._endRun(str(folder))
            if onFinished:
                onFinished(node)

        def failed(error: BaseException) -> None:
            self._endRun(str(folder))
            if onError:
                onError(error)
            else:
                logging.error(f"DuPLUS Segment: {error}")

        def cancelled() -> None:
            self._endRun(str(folder))
            if onCancelled:
                onCancelled()

        callbacks = RunCallbacks(on_progress=onProgress, on_log=onLog, on_done=finished, on_error=failed,
                                 on_cancelled=cancelled)
        self.runner = runner
        try:
            requestId = self.runner.submit(request.worker_message(folder), callbacks)
        except Exception:
            self._cleanUp(str(folder))
            raise
        self._watchScene(request.volume_node.GetScene())
        if startTimer and IN_SLICER_APPLICATION:
            self._startPollTimer()
        return requestId

    def poll(self) -> bool:
        """Deliver the worker's news to the callbacks; returns whether a run is still going."""
        return self.runner.poll()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run ends (for scripts that used :meth:`segmentAsync`)."""
        self.runner.wait(timeout_s=timeout)

    def cancel(self) -> None:
        """Stop the run at once: the worker's process tree is ended, nothing is imported."""
        self.runner.cancel()

    def shutdown(self) -> None:
        """Cancel any run and stop the warm worker (module cleanup, application exit)."""
        if self._timer is not None:
            self._timer.stop()
        self.runner.shutdown()
        if self.runner is not self.localRunner:
            self.localRunner.shutdown()
        self._unwatchScene()

    # ------------------------------------------------------------------ helpers for the GUI
    def checkInputVolume(self, volumeNode) -> str | None:
        """Why this node cannot be segmented, or None when it can (for the Segment tooltip)."""
        try:
            mrml.check_volume_node(volumeNode)
        except InputImageError as error:
            return str(error)
        return None

    def composePrompts(self, modality, region, structures, freeText="", allOfRegion=False) -> list[Prompt]:
        """The user's choices as parsed prompts (raises ``UnknownPromptError`` with the choices)."""
        return cascade.compose(modality, region, structures, freeText, allOfRegion)

    def guessModality(self, volumeNode) -> tuple[cascade.ModalityGuess, str | None]:
        """A suggested modality (from DICOM tags when the volume came from DICOM, else from its
        intensities) and region (from BodyPartExamined, if any)."""
        dicomModality, bodyPart = dicom_tags(volumeNode)
        array = None
        if not dicomModality and volumeNode is not None and volumeNode.GetImageData() is not None:
            array = slicer.util.arrayFromVolume(volumeNode)
        guess = cascade.guess_modality(dicomModality, array)
        return guess, cascade.guess_region(bodyPart, guess.modality)

    def describeDevices(self) -> str:
        """What the device box can offer, without importing torch into Slicer when it is absent."""
        if missing_requirements([TORCH]):
            return "PyTorch is not installed yet; it is installed on the first Segment"
        import torch

        if torch.cuda.is_available():
            return f"GPU: {torch.cuda.get_device_name(0)}"
        return f"CPU only (PyTorch {torch.__version__} has no usable GPU)"

    # ------------------------------------------------------------------ dependencies
    def missingDependencies(self) -> list[str]:
        """pip requirements the worker needs and this Python lacks (torch listed as 'torch')."""
        return [r.pip for r in self.installer.missing()]

    def installDependencies(self, confirm: Callable[[str], bool]) -> None:
        """Install what is missing after ``confirm(question)`` agrees; raises ``MissingDependencyError``
        when declined or failed. Never called at import, only when the user first segments."""
        self.installer.ensure(confirm)

    # ------------------------------------------------------------------ internals
    def _importResult(self, event: dict, request: SegmentRequest):
        if request.volume_node.GetScene() is None:
            raise InputImageError("the input volume was removed while segmenting; nothing was imported")
        node = request.segmentation_node
        if node is not None and node.GetScene() is None:
            raise OutputPathError("the output segmentation was removed while segmenting; nothing was imported")
        return mrml.import_segmentation(event["output"], request.volume_node, segmentation_node=node,
                                        replace=request.replace, show_3d=request.show_3d)

    def _runnerFor(self, server: str | None, apiKey: str | None, model: str | None) -> JobRunner:
        """The local runner, or a runner for that server (its address is checked here)."""
        if not server:
            return self.localRunner
        if model:
            raise ModelBundleError(
                "a model folder cannot be chosen for a remote run: the server uses the model it was started "
                "with (duplus serve --model); leave the model folder empty")
        return RemoteRunner(ServerClient(server, api_key=apiKey), lost_after_s=self.remoteLostAfterSeconds)

    def _endRun(self, folder: str) -> None:
        self._unwatchScene()
        self._cleanUp(folder)

    def _cleanUp(self, folder: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if self._workFolder == folder:
            self._workFolder = None

    def _startPollTimer(self) -> None:
        if self._timer is None:
            self._timer = qt.QTimer()
            self._timer.setInterval(100)
            self._timer.connect("timeout()", self._onTimer)
        self._timer.start()

    def _onTimer(self) -> None:
        if not self.poll():
            self._timer.stop()


def describe_segments(event: dict) -> list[str]:
    """The log lines for a finished run: each segment's volume and confidence, then device and time."""
    lines = []
    for entry in event.get("segments", []):
        confidence = entry.get("confidence")
        confidenceText = "-" if confidence is None else f"{confidence:.2f}"
        found = "" if entry.get("found", True) else " (not found)"
        lines.append(f"{entry.get('name')}: {entry.get('volume_ml', 0.0):.1f} ml, confidence {confidenceText}{found}")
        warning = dropped_parts_warning(entry)
        if warning:
            lines.append(f"Check {warning}")
    if event.get("device"):
        reused = " (model already loaded)" if event.get("model_reused") else ""
        lines.append(f"device: {event['device']}, {event.get('seconds', 0.0):.1f} s in the worker{reused}")
    return lines


def _startup_environment() -> dict[str, str] | None:
    """Inside Slicer, the environment Slicer started with (not its launcher's); None elsewhere."""
    if not IN_SLICER_APPLICATION:
        return None
    return slicer.util.startupEnvironment()


def _process_events() -> Callable[[], None] | None:
    if not IN_SLICER_APPLICATION:
        return None
    return slicer.app.processEvents
