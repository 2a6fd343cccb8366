"""DuPLUS Segment: text-prompted segmentation of the selected volume, from 3D Slicer.

This file only wires Slicer's GUI to the library: the module, its parameter node, the widget that
binds the ``.ui`` to them, and the self-test. The work is in :mod:`DuPLUSLib.slicer.segment_logic`
(volume node -> background worker -> segmentation node), which scripts use directly::

    logic = slicer.util.getModuleLogic("DuPLUSSegment")     # or DuPLUSSegmentLogic()
    segmentation = logic.segment(volumeNode, ["CT/abdomen/liver", "CT/abdomen/spleen"])
    logic.segmentAsync(volumeNode, ["MRI/brain/*"], onFinished=print, onError=print)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import slicer

from DuPLUSLib import cascade, mrml
from DuPLUSLib.errors import DuPLUSError
from DuPLUSLib.progress import overall_percent
from DuPLUSLib.scripted_module import (IN_SLICER_APPLICATION, BackgroundRunWidget, ScriptedLoadableModule,
                                       ScriptedLoadableModuleTest, parameterNodeWrapper, qt, select_data, translate,
                                       vtk)
from DuPLUSLib.scripted_module import tr as _
from DuPLUSLib.slicer import self_test
from DuPLUSLib.slicer.install import install_with_error_display
from DuPLUSLib.slicer.segment_logic import SegmentLogic

try:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
except ImportError:  # pragma: no cover - slicer-core always has them
    vtkMRMLScalarVolumeNode = vtkMRMLSegmentationNode = object  # type: ignore[misc,assignment]

CONTRIBUTORS = ["DuPLUS for 3D Slicer developers (DuPLUS for 3D Slicer project)"]


class DuPLUSSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DuPLUS Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _(
            "Segments the selected volume from text prompts: choose the modality, the body region and the "
            "structures (or type them, e.g. <i>CT/abdomen/liver</i>), then click Segment. The work runs in a "
            "background process: Slicer stays usable, and Cancel stops it at once. Each structure becomes a "
            "named, coloured segment with its standard terminology.<br>The bundled model is for research only: "
            "trained on phantoms, a brain template and two real CTs (and images made from their labels), it "
            'errs on real scans. See its model card on the <a href="https://github.com/duplus-slicer/SlicerDuPLUS">'
            "project page</a>.")
        self.parent.acknowledgementText = _(
            "Follows the published design of DuPLUS (Dual-Prompt Vision-Language Framework for Universal Medical "
            "Image Segmentation and Prognosis, 2025), written afresh for Slicer. Text encoder: all-MiniLM-L6-v2 "
            "(Apache-2.0). Built on MONAI and PyTorch.")
        if IN_SLICER_APPLICATION:
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the DuPLUS sample CT in the Sample Data module (it ships inside the extension)."""
    import SampleData
    from DuPLUSLib.samples import sample_volume_path

    path = sample_volume_path()
    if path.is_file():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="DuPLUS", sampleName="DuPLUSSampleCTAbdomen", uris=path.as_uri(), fileNames=path.name,
            thumbnailFileName=str(Path(__file__).resolve().parent / "Resources/Icons/DuPLUSSegmentSample.png"),
            nodeNames="DuPLUSSampleCTAbdomen", loadFileTypes="VolumeFile")


@parameterNodeWrapper
class DuPLUSSegmentParameterNode:
    """The module's state, saved with the scene. ``modality``, ``region``, ``structures``, ``device``
    and ``modelFolder`` are wired by hand (dropdowns filled from the ontology); the rest by ``.ui``."""

    inputVolume: vtkMRMLScalarVolumeNode
    modality: str = "CT"
    region: str = "abdomen"
    structures: list[str]
    allOfRegion: bool = False
    freeText: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    device: str = "auto"
    modelFolder: str = ""  # empty: the bundled model
    show3D: bool = True
    keepWorkerWarm: bool = True
    remoteServer: bool = False  # "Where to run", wired by hand; the server's API key is never kept here
    serverUrl: str = ""


class DuPLUSSegmentLogic(SegmentLogic):
    """:class:`~DuPLUSLib.slicer.segment_logic.SegmentLogic` with this module's parameter node."""

    def getParameterNode(self):
        return DuPLUSSegmentParameterNode(super().getParameterNode())


class DuPLUSSegmentWidget(BackgroundRunWidget):
    def __init__(self, parent=None) -> None:
        BackgroundRunWidget.__init__(self, parent)
        self._lastGuessedVolumeId = None
        self._updatingStructures = False

    def setup(self) -> None:
        BackgroundRunWidget.setup(self)
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
        self.ui.whereToRunComboBox.connect("currentIndexChanged(int)", lambda i: self._set("remoteServer", i == 1))
        self.ui.testConnectionButton.connect("clicked(bool)", lambda: self.ui.connectionStatusLabel.setText(
            self.logic.describeServer(self._parameterNode.serverUrl, self.ui.apiKeyLineEdit.text)))
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedToggled)
        self.startWatching()

    def enter(self) -> None:
        BackgroundRunWidget.enter(self)
        if self._parameterNode.keepWorkerWarm and not self._parameterNode.remoteServer:
            self.logic.prestartWorker()

    def initializeParameterNode(self) -> None:
        BackgroundRunWidget.initializeParameterNode(self)
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, node) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode, self._parameterNodeGuiTag = node, None
        if not node:  # the scene closes; the next reuses node IDs, so guess its first volume anew
            self._lastGuessedVolumeId, self.ui.modalityGuessLabel.text = None, ""
        if node:
            self._parameterNodeGuiTag = node.connectGui(self.ui)
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()
            self.onModalityChanged()  # fill regions and structures for the saved modality and region

    def _set(self, name: str, value) -> None:
        if self._parameterNode is not None:
            setattr(self._parameterNode, name, value)

    def onDeviceChanged(self) -> None:
        self._set("device", self.ui.deviceComboBox.currentData or "auto")

    def onModelFolderChanged(self, path: str) -> None:
        self._set("modelFolder", path)

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """Copy what connectGui does not bind (dropdowns, model path) and refresh the Segment button."""
        node = self._parameterNode
        if node is None:
            return
        select_data(self.ui.modalityComboBox, node.modality)
        select_data(self.ui.deviceComboBox, node.device)
        self.ui.whereToRunComboBox.currentIndex = int(node.remoteServer)  # 0: this computer, 1: a remote server
        self.ui.remoteServerWidget.visible = node.remoteServer
        if self.ui.modelPathLineEdit.currentPath != node.modelFolder:
            self.ui.modelPathLineEdit.currentPath = node.modelFolder
        self.updateApplyButton()

    def onAdvancedToggled(self, collapsed: bool) -> None:
        if not collapsed and not self.ui.deviceInfoLabel.text:  # finding the GPU imports torch: only on demand
            self.ui.deviceInfoLabel.text = self.logic.describeDevices()

    # ------------------------------------------------------------------ the prompt cascade
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
        if not select_data(self.ui.regionComboBox, self._parameterNode.region):
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
        self._parameterNode.structures = [widget.item(row).data(qt.Qt.UserRole) for row in range(widget.count)
                                          if widget.item(row).checkState() == qt.Qt.Checked]

    def onInputVolumeChanged(self, node) -> None:
        """Suggest a modality (and region) for a newly selected volume, and stop adding to a result made
        on another volume: the next one must not land in another patient's segmentation."""
        if node is None or self._parameterNode is None:
            return
        if (output := self._parameterNode.outputSegmentation) and not mrml.is_segmentation_of(output, node):
            self._parameterNode.outputSegmentation = None
        if node.GetID() == self._lastGuessedVolumeId:
            return
        self._lastGuessedVolumeId = node.GetID()
        guess, region = self.logic.guessModality(node)
        self.ui.modalityGuessLabel.text = (_("Suggested: {modality} ({reason})").format(
            modality=guess.modality, reason=guess.reason) if guess.modality else guess.reason)
        if guess.modality:
            self._parameterNode.modality = guess.modality
            self._parameterNode.region = region or self._parameterNode.region
            select_data(self.ui.modalityComboBox, guess.modality)
            self.onModalityChanged()

    # ------------------------------------------------------------------ Segment / Cancel
    def currentPrompts(self):
        """(parsed prompts, None) or ([], why the prompts cannot be parsed)."""
        node = self._parameterNode
        try:
            return self.logic.composePrompts(node.modality, node.region, node.structures, node.freeText,
                                             node.allOfRegion), None
        except DuPLUSError as error:
            return [], str(error)

    def updateApplyButton(self) -> None:
        node = self._parameterNode
        if node is None:  # the scene is closing
            return
        prompts, promptError = self.currentPrompts()
        missing = cascade.missing_for_segment(self.logic.checkInputVolume(node.inputVolume), prompts, promptError)
        if node.remoteServer and not node.serverUrl.strip():
            missing.append(_("enter the server's address under Where to run"))
        self.ui.promptSummaryLabel.text = promptError or ", ".join(p.key for p in prompts)
        if self.logic.isBusy:
            self.ui.applyButton.text, self.ui.applyButton.enabled = _("Cancel"), True
            self.ui.applyButton.toolTip = _("Stop the running segmentation; nothing is imported")
        else:
            self.ui.applyButton.text, self.ui.applyButton.enabled = _("Segment"), not missing
            self.ui.applyButton.toolTip = "\n".join(missing) or _("Segment {count} structure(s)").format(count=len(prompts))

    def onApplyButton(self) -> None:
        if self.logic.isBusy:
            self.logic.cancel()
            return
        node = self._parameterNode
        try:
            request = self.logic.prepare(node.inputVolume, self.currentPrompts()[0], node.outputSegmentation,
                                         device=node.device, model=node.modelFolder or None, showIn3D=node.show3D)
            if request.clashes:
                if not slicer.util.confirmYesNoDisplay(_("'{name}' already has {segments}. Replace them?").format(
                        name=node.outputSegmentation.GetName(), segments=", ".join(request.clashes))):
                    return
                request = dataclasses.replace(request, replace=True)
            if not node.remoteServer and not install_with_error_display(self.logic.installer):  # remote: no torch here
                self.ui.statusLabel.text = _("Not started: the Python packages it needs are not installed")
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the background process...")
            self.logic.setWarm(node.keepWorkerWarm)
            self.logic.submit(request, onProgress=self.onProgress, onLog=self.ui.logTextEdit.appendPlainText,
                              onFinished=self.onFinished, onError=self.onError, onCancelled=self.onCancelled,
                              server=node.serverUrl if node.remoteServer else None, apiKey=self.ui.apiKeyLineEdit.text,
                              startTimer=False)  # this widget polls with its own timer, which also shows the time
        except Exception as error:  # a full disk or no memory as much as bad input: say so, keep Slicer usable
            self.onError(error)
            return
        self.pollTimer.start()
        self.updateApplyButton()

    def onPollTimer(self) -> None:
        if self._parameterNode is None:  # the scene closed under a tick: nothing left to update
            self.pollTimer.stop()
            return
        self.logic.poll()
        self.ui.elapsedLabel.text = _("{seconds:.0f} s").format(seconds=self.logic.elapsedSeconds)
        if not self.logic.isBusy:
            self.pollTimer.stop()
        self.updateApplyButton()

    def onProgress(self, stage: str, fraction: float, message: str) -> None:
        self.ui.progressBar.value = overall_percent(stage, fraction)
        self.ui.statusLabel.text = f"{stage}: {message}"

    def onFinished(self, segmentationNode) -> None:
        self.ui.progressBar.value = 100
        toCheck = ", ".join(self.logic.segmentsToCheck)  # kept parts that may be the wrong ones (see the log)
        done = _("Done: {count} segment(s) in {seconds:.1f} s. Check {names}: see the log") if toCheck else _(
            "Done: {count} segment(s) in {seconds:.1f} s")
        self.ui.statusLabel.text = done.format(count=segmentationNode.GetSegmentation().GetNumberOfSegments(),
                                               seconds=self.logic.lastRunSeconds, names=toCheck)
        self._set("outputSegmentation", segmentationNode)
        self.updateApplyButton()

    def onError(self, error: BaseException) -> None:
        self.ui.statusLabel.text = _("Failed: {message}").format(message=(str(error) or type(error).__name__).splitlines()[0])
        self.ui.logTextEdit.appendPlainText(str(error))
        slicer.util.errorDisplay(str(error), windowTitle=_("DuPLUS Segment"))
        self.updateApplyButton()

    def onCancelled(self) -> None:
        self.ui.statusLabel.text = _("Cancelled; the scene is unchanged")
        self.ui.progressBar.value = 0
        self.updateApplyButton()


class DuPLUSSegmentTest(ScriptedLoadableModuleTest):
    """The self-test: real inference with the bundled model on the sample volume. Skipped, with the
    reason, where torch, MONAI or transformers are missing (as on Slicer's build farm)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self_test.run_each(self, [self.test_SegmentSampleVolume, self.test_BadInputsAreRefusedBeforeAnyWork])

    def test_SegmentSampleVolume(self) -> None:
        self_test.skip_unless_installed(self, self_test.SEGMENT_ENGINE)
        self_test.check_sample_segmentation(self, DuPLUSSegmentLogic(), ["CT/abdomen/liver", "CT/abdomen/spleen"])

    def test_BadInputsAreRefusedBeforeAnyWork(self) -> None:
        self_test.check_bad_inputs_refused(self, DuPLUSSegmentLogic())
