"""DuPLUS Prognosis: survival risk of a head-and-neck cancer patient from the EHR (and the tumour).

This file only wires Slicer's GUI to the library: the module, its parameter node, the widget that
binds the ``.ui`` to them, and the self-test. The work is in :mod:`DuPLUSLib.slicer.prognosis_logic`
(form -> background prediction -> readout table and Kaplan-Meier chart nodes)::

    logic = DuPLUSPrognosisLogic()
    report = logic.predict({"age": 63, "stage": "III", "hpv": "positive"})
    table, chart = logic.showReadout(report)

The form's choices and ranges come from the EHR schema (:mod:`DuPLUSLib.prognosis.form`); "Further covariates",
from the model's saved column list (:class:`~DuPLUSLib.slicer.prognosis_logic.ExtraCovariatesForm`).
"""

from __future__ import annotations

from typing import Annotated

import slicer

from DuPLUSLib.errors import CancelledError, DuPLUSError
from DuPLUSLib.progress import overall_percent
from DuPLUSLib.prognosis.form import (AGE_NOT_RECORDED, FORM_CHOICES, FORM_RANGES, NOT_RECORDED,
                                      PACK_YEARS_NOT_RECORDED)
from DuPLUSLib.scripted_module import (BackgroundRunWidget, Choice, ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                       WithinRange, parameterNodeWrapper, translate, vtk)
from DuPLUSLib.scripted_module import tr as _
from DuPLUSLib.slicer import self_test
from DuPLUSLib.slicer.install import install_with_error_display
from DuPLUSLib.slicer.prognosis_logic import EXTRA_PARAMETER, ExtraCovariatesForm, PrognosisLogic  # noqa: F401

try:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
except ImportError:  # pragma: no cover
    vtkMRMLScalarVolumeNode = vtkMRMLSegmentationNode = object  # type: ignore[misc,assignment]

CONTRIBUTORS = ["DuPLUS for 3D Slicer developers (DuPLUS for 3D Slicer project)"]


class DuPLUSPrognosis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DuPLUS Prognosis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _(
            "Survival risk for a head-and-neck cancer patient: fill the EHR form, optionally pick the CT and its "
            "tumour segmentation (GTVp/GTVn, e.g. from DuPLUS Segment), and click Predict. The readout shows the "
            "risk score, its percentile and risk group in the training cohort, and predicted survival at 2 and 5 "
            "years, with the training cohort's Kaplan-Meier curves and what drove the risk. A model trained on further "
            "columns asks for them under 'Further covariates'. A research tool, not for clinical decisions.")
        self.parent.acknowledgementText = _(
            "DuPLUS (arXiv 2510.03483); the bundled EHR model is trained on the larynx cancer cohort shipped with "
            "lifelines (Kardaun 1983).")


@parameterNodeWrapper
class DuPLUSPrognosisParameterNode:
    """The module's state, saved with the scene. The EHR fields bind to the ``.ui`` by name: combo
    boxes with their choices (``""`` = not recorded), spin boxes with their ranges (age and pack-years
    below zero = not recorded; a model needs the age); ``modelFolder`` (empty: the bundled model) is wired by hand."""

    inputVolume: vtkMRMLScalarVolumeNode
    tumourSegmentation: vtkMRMLSegmentationNode
    age: Annotated[float, WithinRange(*FORM_RANGES["age"])] = AGE_NOT_RECORDED  # required: filled in by hand
    sex: Annotated[str, Choice(FORM_CHOICES["sex"])] = NOT_RECORDED
    site: Annotated[str, Choice(FORM_CHOICES["site"])] = NOT_RECORDED
    t_stage: Annotated[str, Choice(FORM_CHOICES["t_stage"])] = NOT_RECORDED
    n_stage: Annotated[str, Choice(FORM_CHOICES["n_stage"])] = NOT_RECORDED
    m_stage: Annotated[str, Choice(FORM_CHOICES["m_stage"])] = NOT_RECORDED
    stage: Annotated[str, Choice(FORM_CHOICES["stage"])] = NOT_RECORDED
    hpv: Annotated[str, Choice(FORM_CHOICES["hpv"])] = NOT_RECORDED
    smoking: Annotated[str, Choice(FORM_CHOICES["smoking"])] = NOT_RECORDED
    pack_years: Annotated[float, WithinRange(*FORM_RANGES["pack_years"])] = PACK_YEARS_NOT_RECORDED
    ecog: Annotated[str, Choice(FORM_CHOICES["ecog"])] = NOT_RECORDED
    treatment: Annotated[str, Choice(FORM_CHOICES["treatment"])] = NOT_RECORDED
    modelFolder: str = ""
    remoteServer: bool = False  # "Where to run", wired by hand; the server's API key is never kept here
    serverUrl: str = ""


FORM_FIELDS = ("age", *FORM_CHOICES, "pack_years")


class DuPLUSPrognosisLogic(PrognosisLogic):
    """:class:`~DuPLUSLib.slicer.prognosis_logic.PrognosisLogic` with this module's parameter node."""

    def getParameterNode(self):
        return DuPLUSPrognosisParameterNode(super().getParameterNode())


class DuPLUSPrognosisWidget(BackgroundRunWidget):
    pollIntervalMs = 150

    def setup(self) -> None:
        BackgroundRunWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DuPLUSPrognosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DuPLUSPrognosisLogic()
        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)
        self.ui.cancelButton.connect("clicked(bool)", self.logic.cancel)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)
        self.ui.whereToRunComboBox.connect("currentIndexChanged(int)", lambda index: self._parameterNode and setattr(
            self._parameterNode, "remoteServer", index == 1))
        self.ui.testConnectionButton.connect("clicked(bool)", lambda: self.ui.connectionStatusLabel.setText(
            self.logic.describeServer(self._parameterNode.serverUrl, self.ui.apiKeyLineEdit.text)))
        self.extraForm = ExtraCovariatesForm(self.logic, self.layout, uiWidget)
        self.startWatching()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        BackgroundRunWidget.onSceneStartClose(self, caller, event)
        self.setBusy(False)

    def setParameterNode(self, node) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode, self._parameterNodeGuiTag = node, None
        self.extraForm.rebuild(node.modelFolder if node else None, node, force=True)
        if node:
            self._parameterNodeGuiTag = node.connectGui(self.ui)
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is not None and self.ui.modelPathLineEdit.currentPath != self._parameterNode.modelFolder:
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelFolder
        if self._parameterNode is not None:  # 0: this computer, 1: a remote server
            self.ui.whereToRunComboBox.currentIndex = int(self._parameterNode.remoteServer)
            self.ui.remoteServerWidget.visible = self._parameterNode.remoteServer

    def onModelFolderChanged(self, path: str) -> None:
        if self._parameterNode is not None:
            self._parameterNode.modelFolder = path
            self.extraForm.rebuild(path, self._parameterNode)

    def formValues(self) -> dict:
        return {**{field: getattr(self._parameterNode, field) for field in FORM_FIELDS}, **self.extraForm.values()}

    def setBusy(self, busy: bool) -> None:
        self.ui.predictButton.enabled, self.ui.cancelButton.enabled = not busy, busy

    # ------------------------------------------------------------------ actions
    def onPredictButton(self) -> None:
        node = self._parameterNode
        if node is None or (not node.remoteServer and not install_with_error_display(self.logic.installer)):
            return  # a remote prediction needs no torch here
        try:
            with slicer.util.tryWithErrorDisplay(_("DuPLUS Prognosis could not start the prediction.")):
                self.logic.predictAsync(self.formValues(), node.inputVolume, node.tumourSegmentation,
                                        node.modelFolder or None, onProgress=self.onProgress, onFinished=self.onFinished,
                                        onError=self.onError, onCancelled=self.onCancelled,
                                        server=node.serverUrl if node.remoteServer else None,
                                        apiKey=self.ui.apiKeyLineEdit.text)
        except DuPLUSError as error:  # a form or tumour error, already shown
            self.ui.statusLabel.text = str(error)
            return
        self.ui.statusLabel.text = _("Predicting...")
        self.setBusy(True)
        self.pollTimer.start()

    def onPollTimer(self) -> None:
        if self._parameterNode is None:  # the scene closed under a tick: nothing left to update
            self.pollTimer.stop()
            return
        if not self.logic.poll():
            self.pollTimer.stop()
            self.setBusy(False)

    def onProgress(self, stage: str, fraction: float, message: str) -> None:
        self.ui.statusLabel.text = _("Predicting ({percent}%): {message}").format(
            percent=overall_percent(stage, fraction), message=message)

    def onFinished(self, report: dict) -> None:
        table, chart = self.logic.showReadout(report)
        contributionChart = self.logic.showContributions(report)[1]  # not "_, chart =": _ is tr here
        self.ui.readoutTextBrowser.plainText = self.logic.summaryText(report)
        self.ui.statusLabel.text = _("Done.")
        self.logic.showChartsSideBySide(chart, contributionChart)

    def onError(self, error: BaseException) -> None:
        self.ui.statusLabel.text = str(error)
        slicer.util.errorDisplay(str(error), windowTitle=_("DuPLUS Prognosis"))

    def onCancelled(self) -> None:
        self.ui.statusLabel.text = str(CancelledError("prediction cancelled"))


class DuPLUSPrognosisTest(ScriptedLoadableModuleTest):
    """Registered with Slicer's CI (WITH_GENERIC_TESTS + slicer_add_python_unittest). The prediction
    test is skipped, with the reason, where torch or transformers are missing (Slicer's build farm)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self_test.run_each(self, [self.test_PredictAndShowReadout, self.test_ImpossibleAgeIsRefused])

    def test_PredictAndShowReadout(self) -> None:
        self_test.skip_unless_installed(self, self_test.PROGNOSIS_ENGINE)
        logic = DuPLUSPrognosisLogic()
        report = logic.predict({"age": 70, "stage": "IV", "site": "larynx"})
        table, chart = logic.showReadout(report)
        self.assertEqual(table.GetNumberOfRows(), 6)
        self.assertIn(table.GetAttribute("DuPLUS.RiskGroup"), ("low", "intermediate", "high"))
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 3 * 3 + 3)

    def test_ImpossibleAgeIsRefused(self) -> None:
        from DuPLUSLib.prognosis.ehr import EHRValidationError

        with self.assertRaises(EHRValidationError):
            DuPLUSPrognosisLogic().validateForm({"age": 212})
