"""DuPLUS Prognosis: survival risk of a head-and-neck cancer patient from the EHR (and the tumour).

The module file only wires Slicer to the library (:mod:`DuPLUSLib.prognosis`):

* ``DuPLUSPrognosisWidget`` binds the ``.ui`` (EHR form, volume, tumour segmentation) to the
  parameter node and the logic;
* ``DuPLUSPrognosisLogic`` validates the form, writes the volume and the tumour segments to files,
  runs ``duplus prognosis predict`` in a background process (:mod:`DuPLUSLib.prognosis.process`),
  and shows the readout as a table node, a plot chart node (Kaplan-Meier curves per risk group with
  the patient's curve) and text;
* ``DuPLUSPrognosisTest`` is the self-test: a prediction with the bundled model, checked nodes.

As in DuPLUS Segment, the Logic works without Qt (scripts, and the project's tests on the
``slicer-core`` wheel), so Qt-only names are imported lazily and the base classes have stand-ins.

Console use::

    logic = DuPLUSPrognosisLogic()
    report = logic.predict({"age": 63, "stage": "III", "hpv": "positive"})
    table, chart = logic.showReadout(report)

The form shows the head-and-neck fields of the ``.ui`` plus, in "Further covariates", one typed
widget for every extra column the loaded model was trained with (built from the model's saved
column list by :func:`DuPLUSLib.prognosis.covariates.form_fields`; the values live in the parameter
node as JSON under ``EXTRA_PARAMETER``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import slicer

from DuPLUSLib.errors import CancelledError, DuPLUSError, InputImageError

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


try:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
except ImportError:  # pragma: no cover
    vtkMRMLScalarVolumeNode = vtkMRMLSegmentationNode = object  # type: ignore[misc,assignment]

MODULE_NAME = "DuPLUSPrognosis"
READOUT_ATTRIBUTE = "DuPLUS.PrognosisReadout"  # marks the nodes this module made, to reuse them
EXTRA_PARAMETER = "DuPLUS.ExtraCovariates"  # parameter-node entry: JSON {column: value} of the generated form
SIDE_BY_SIDE_LAYOUT_ID = 5130  # a layout of two plot views: Kaplan-Meier, then what drove the risk
SIDE_BY_SIDE_LAYOUT = """<layout type="horizontal" split="true">
 <item><view class="vtkMRMLPlotViewNode" singletontag="PlotView1"><property name="viewlabel" action="default">P</property></view></item>
 <item><view class="vtkMRMLPlotViewNode" singletontag="DuPLUSContributions"><property name="viewlabel" action="default">C</property></view></item>
</layout>"""
GROUP_COLOURS = {"low": (0.18, 0.49, 0.20), "low-intermediate": (0.49, 0.70, 0.26),
                 "intermediate": (0.98, 0.66, 0.15), "high-intermediate": (0.94, 0.42, 0.0),
                 "high": (0.78, 0.16, 0.16), "all": (0.27, 0.35, 0.39)}

# The EHR form: field -> choices offered by the combo boxes ("" = not recorded).
FORM_CHOICES = {
    "sex": ["", "male", "female"],
    "site": ["", "oropharynx", "larynx", "hypopharynx", "oral_cavity", "nasopharynx", "unknown_primary"],
    "t_stage": ["", "Tx", "T0", "Tis", "T1", "T2", "T3", "T4", "T4a", "T4b"],
    "n_stage": ["", "Nx", "N0", "N1", "N2", "N2a", "N2b", "N2c", "N3", "N3a", "N3b"],
    "m_stage": ["", "Mx", "M0", "M1"],
    "stage": ["", "I", "II", "III", "IV", "IVA", "IVB", "IVC"],
    "hpv": ["", "positive", "negative"],
    "smoking": ["", "never", "former", "current"],
    "ecog": ["", "0", "1", "2", "3", "4"],
    "treatment": ["", "radiotherapy", "chemoradiotherapy", "surgery", "surgery_radiotherapy",
                  "surgery_chemoradiotherapy"],
}


# ------------------------------------------------------------------------------------- module
class DuPLUSPrognosis(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        if parent is None:
            return
        self.parent.title = _("DuPLUS Prognosis")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["DuPLUS for 3D Slicer developers"]
        self.parent.helpText = _(
            "Survival risk for a head-and-neck cancer patient: fill the EHR form, optionally pick the CT "
            "and its tumour segmentation (GTVp/GTVn, e.g. from DuPLUS Segment), and click Predict. The "
            "readout shows the risk score, its percentile and risk group in the training cohort, and "
            "predicted survival at 2 and 5 years, with the training cohort's Kaplan-Meier curves. "
            "A research tool, not for clinical decisions."
        )
        self.parent.acknowledgementText = _(
            "DuPLUS (arXiv 2510.03483); the bundled EHR model is trained on the larynx cancer cohort "
            "shipped with lifelines (Kardaun 1983)."
        )


@parameterNodeWrapper
class DuPLUSPrognosisParameterNode:
    """The module's state, saved with the scene.

    inputVolume, tumourSegmentation - optional image inputs (models with image features need them).
    age ... treatment - the EHR form ("" = not recorded).
    modelFolder - a prognosis model folder; empty uses the bundled model.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    tumourSegmentation: vtkMRMLSegmentationNode
    age: float = 60.0
    sex: str = ""
    site: str = ""
    t_stage: str = ""
    n_stage: str = ""
    m_stage: str = ""
    stage: str = ""
    hpv: str = ""
    smoking: str = ""
    pack_years: float = -1.0  # negative = not recorded
    ecog: str = ""
    treatment: str = ""
    modelFolder: str = ""


# ---------------------------------------------------------------------------------- widget
class DuPLUSPrognosisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui to the parameter node and the logic; holds no prognosis logic itself."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: DuPLUSPrognosisLogic | None = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DuPLUSPrognosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DuPLUSPrognosisLogic()
        for field, choices in FORM_CHOICES.items():
            combo = getattr(self.ui, field)
            for choice in choices:
                combo.addItem(choice)  # the text is the value the parameter node stores ("" = not recorded)
        self.ui.predictButton.clicked.connect(self.onPredictButton)
        self.ui.cancelButton.clicked.connect(self.onCancelButton)
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(150)
        self.pollTimer.timeout.connect(self.onPollTimer)
        import ctk

        self._extraWidgets: dict[str, Any] = {}
        self._extraModelFolder: str | None = None
        self.extraCollapsibleButton = ctk.ctkCollapsibleButton()
        self.extraCollapsibleButton.text = _("Further covariates (from the model)")
        self.extraFormLayout = qt.QFormLayout(self.extraCollapsibleButton)
        self.layout.insertWidget(self.layout.indexOf(uiWidget) + 1, self.extraCollapsibleButton)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if hasattr(self, "pollTimer"):
            self.pollTimer.stop()
        if self.logic:
            self.logic.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic:
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.onModelFolderChanged(str(self._parameterNode.modelFolder or ""))

    # ------------------------------------------------------------ generated form
    def onModelFolderChanged(self, folder: str = "") -> None:
        """Rebuild "Further covariates" from the chosen model's column list (typed widgets)."""
        folder = str(folder or "")
        folder = "" if folder == "." else folder  # an empty pathlib.Path reads as "."
        if folder == self._extraModelFolder:
            return
        self._extraModelFolder = folder
        while self.extraFormLayout.rowCount() > 0:
            self.extraFormLayout.removeRow(0)
        self._extraWidgets = {}
        try:
            fields = self.logic.extraFormFields(folder or None)
        except DuPLUSError as error:
            self.extraFormLayout.addRow(qt.QLabel(_("The model does not load: {error}").format(error=error)))
            return
        saved = self.logic.extraValues(self._rawParameterNode()) if self._parameterNode else {}
        for field in fields:
            widget = self._extraWidget(field, saved.get(field.name))
            self.extraFormLayout.addRow(f"{field.label}:", widget)
            self._extraWidgets[field.name] = (field, widget)
        self.extraCollapsibleButton.visible = bool(fields)

    def _extraWidget(self, field, value):
        if field.widget == "choice":
            widget = qt.QComboBox()
            for choice in field.choices:
                widget.addItem(choice)
            widget.setCurrentText("" if value is None else str(value))
            widget.currentTextChanged.connect(self.onExtraValueChanged)
        else:
            widget = qt.QLineEdit()
            widget.placeholderText = _("not recorded")
            if field.widget == "number":
                validator = qt.QDoubleValidator(field.minimum, field.maximum, field.decimals, widget)
                validator.notation = qt.QDoubleValidator.StandardNotation
                widget.setValidator(validator)
            widget.text = "" if value is None else str(value)
            widget.textChanged.connect(self.onExtraValueChanged)
        widget.toolTip = field.tooltip
        return widget

    def _rawParameterNode(self):
        return getattr(self._parameterNode, "parameterNode", self._parameterNode)

    def onExtraValueChanged(self, *_args) -> None:
        values = {name: (w.currentText if f.widget == "choice" else w.text) for name, (f, w) in self._extraWidgets.items()}
        self.logic.setExtraValues(self._rawParameterNode(), values)

    # ------------------------------------------------------------------ actions
    def formValues(self) -> dict[str, Any]:
        node = self._parameterNode
        values = {field: getattr(node, field) for field in FORM_CHOICES}
        values["age"] = node.age
        values["pack_years"] = node.pack_years if node.pack_years >= 0 else None
        values.update(self.logic.extraValues(self._rawParameterNode()))
        return values

    def onPredictButton(self) -> None:
        node = self._parameterNode
        try:
            self.logic.predictAsync(self.formValues(), node.inputVolume, node.tumourSegmentation,
                                    node.modelFolder or None)
        except DuPLUSError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("DuPLUS Prognosis"))
            return
        self.ui.statusLabel.text = _("Predicting...")
        self.ui.predictButton.enabled = False
        self.ui.cancelButton.enabled = True
        self.pollTimer.start()

    def onCancelButton(self) -> None:
        self.logic.cancel()

    def onPollTimer(self) -> None:
        finished = self.logic.poll()
        if not finished:
            return
        self.pollTimer.stop()
        self.ui.predictButton.enabled = True
        self.ui.cancelButton.enabled = False
        if self.logic.lastError is not None:
            self.ui.statusLabel.text = str(self.logic.lastError)
            if not isinstance(self.logic.lastError, CancelledError):
                slicer.util.errorDisplay(str(self.logic.lastError), windowTitle=_("DuPLUS Prognosis"))
            return
        table, chart = self.logic.showReadout(self.logic.lastReport)
        _, contributionChart = self.logic.showContributions(self.logic.lastReport)
        self.ui.readoutTextBrowser.plainText = self.logic.summaryText(self.logic.lastReport)
        self.ui.statusLabel.text = _("Done.")
        self.logic.showChartsSideBySide(chart, contributionChart)


# ----------------------------------------------------------------------------------- logic
class DuPLUSPrognosisLogic(ScriptedLoadableModuleLogic):
    """Form -> validated EHR; nodes -> files; background prediction; report -> MRML table and plot."""

    def __init__(self, python: str | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.python = python
        self._run = None
        self._folder: str | None = None
        self.lastReport: dict | None = None
        self.lastError: BaseException | None = None

    def getParameterNode(self):
        return DuPLUSPrognosisParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def validateForm(values: dict[str, Any], modelFolder: str | None = None) -> dict[str, Any]:
        """The form's values as a clean dict; raises EHRValidationError naming the field.

        Values beyond the EHR schema (the generated form) are checked against the model's columns,
        so a model folder is loaded only when such values are given or a folder is named.
        """
        from DuPLUSLib.prognosis.ehr import EHR_FIELDS, parse_ehr

        given = {k: v for k, v in values.items() if v not in ("", None)}
        if modelFolder is None and set(given) <= set(EHR_FIELDS):
            return parse_ehr(given).to_dict()
        from DuPLUSLib.prognosis.bundle import load_prognosis_bundle

        record, covariates = load_prognosis_bundle(modelFolder).parse_patient(given)
        return {**record.to_dict(), **{k: v for k, v in covariates.items() if v is not None}}

    # ------------------------------------------------------------ generated form
    @staticmethod
    def extraFormFields(modelFolder: str | None = None) -> list:
        """The inputs the form needs beyond the EHR schema: one per extra column of the model, typed
        (number with its limits, choice of the levels the model knows, free text)."""
        from DuPLUSLib.prognosis.bundle import load_prognosis_bundle
        from DuPLUSLib.prognosis.covariates import form_fields

        return form_fields(load_prognosis_bundle(modelFolder).extra_columns)

    @staticmethod
    def setExtraValues(parameterNode, values: dict[str, Any]) -> None:
        """Keep the generated form's values in the (scene-saved) parameter node, empty ones left out."""
        clean = {k: v for k, v in values.items() if v not in ("", None)}
        parameterNode.SetParameter(EXTRA_PARAMETER, json.dumps(clean, sort_keys=True))

    @staticmethod
    def extraValues(parameterNode) -> dict[str, Any]:
        text = parameterNode.GetParameter(EXTRA_PARAMETER) if parameterNode is not None else ""
        try:
            values = json.loads(text) if text else {}
        except ValueError:
            return {}
        return values if isinstance(values, dict) else {}

    @staticmethod
    def tumourMasks(segmentationNode, referenceVolumeNode) -> dict[str, np.ndarray]:
        """GTVp/GTVn masks on the reference volume's grid, found by DuPLUS tag or by name."""
        from DuPLUSLib import mrml
        from DuPLUSLib.ontology import load_ontology
        from DuPLUSLib.prognosis.image_features import TUMOUR_KEYS, NoTumourError

        if segmentationNode is None:
            raise NoTumourError("no tumour segmentation selected; segment GTVp/GTVn first (DuPLUS Segment)")
        ontology = load_ontology()
        masks = {}
        for segment in mrml.imported_segments(segmentationNode):
            key = segment.structure
            if key is None:
                try:
                    key = ontology.structure_key(segment.name)
                except DuPLUSError:
                    continue
            if key in TUMOUR_KEYS:
                array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segment.segment_id,
                                                                   referenceVolumeNode)
                if array is not None and array.any():
                    masks[key] = np.asarray(array, dtype=bool)
        if not masks:
            names = ", ".join(s.name for s in mrml.imported_segments(segmentationNode)) or "none"
            raise NoTumourError(
                f"segmentation '{segmentationNode.GetName()}' has no non-empty tumour segment (GTVp or GTVn); "
                f"its segments are: {names}"
            )
        return masks

    def writeImageInputs(self, volumeNode, segmentationNode, folder: str | Path) -> tuple[Path, Path]:
        """The volume as NRRD and its tumour segments as .seg.nrrd in ``folder`` (LPS, exact geometry)."""
        from DuPLUSLib import mrml
        from DuPLUSLib.imageio import SegmentMask, write_image, write_segmentation
        from DuPLUSLib.ontology import load_ontology

        image = mrml.volume_image_from_node(volumeNode)
        masks = self.tumourMasks(segmentationNode, volumeNode)
        ontology = load_ontology()
        folder = Path(folder)
        image_path, seg_path = folder / "image.nrrd", folder / "tumour.seg.nrrd"
        write_image(image, image_path)
        write_segmentation([SegmentMask(ontology.structures[k], m) for k, m in masks.items()], image, seg_path)
        return image_path, seg_path

    # ------------------------------------------------------------------ prediction
    def predict(self, ehr: dict[str, Any], volumeNode=None, segmentationNode=None,
                modelFolder: str | None = None) -> dict:
        """Predict in this process (scripts, tests); returns the report that ``predict`` writes."""
        from DuPLUSLib.prognosis.bundle import load_prognosis_bundle
        from DuPLUSLib.prognosis.pipeline import predict_patient, report_payload

        values = self.validateForm(ehr, modelFolder)
        bundle = load_prognosis_bundle(modelFolder)
        folder = tempfile.mkdtemp(prefix="DuPLUSPrognosis-")
        try:
            image = segmentation = None
            if volumeNode is not None:
                image, segmentation = self.writeImageInputs(volumeNode, segmentationNode, folder)
            readout = predict_patient(bundle, values, image, segmentation)
            return report_payload(readout, bundle)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def predictAsync(self, ehr: dict[str, Any], volumeNode=None, segmentationNode=None,
                     modelFolder: str | None = None) -> None:
        """Validate, write inputs, start the background process; then call :meth:`poll` until True."""
        from DuPLUSLib.prognosis.process import PredictionRun

        if self._run is not None and self.isBusy:
            raise InputImageError("a prediction is already running; wait for it or cancel it")
        clean = self.validateForm(ehr, modelFolder)  # errors reach the user before any process starts
        self._cleanUp()
        self._folder = tempfile.mkdtemp(prefix="DuPLUSPrognosis-")
        image = segmentation = None
        try:
            if volumeNode is not None:
                image, segmentation = self.writeImageInputs(volumeNode, segmentationNode, self._folder)
            env = slicer.util.startupEnvironment() if IN_SLICER_APPLICATION else None
            self.lastReport, self.lastError = None, None
            self._run = PredictionRun.start(self._folder, clean, modelFolder, str(image) if image else None,
                                            str(segmentation) if segmentation else None, self.python, env)
        except BaseException:
            self._cleanUp()
            raise

    @property
    def isBusy(self) -> bool:
        from DuPLUSLib.prognosis.process import PredictionState

        return self._run is not None and self._run.state is PredictionState.RUNNING

    def poll(self) -> bool:
        """True once the background prediction has finished (see ``lastReport`` / ``lastError``)."""
        from DuPLUSLib.prognosis.process import PredictionState

        if self._run is None:
            return True
        state = self._run.poll()
        if state is PredictionState.RUNNING:
            return False
        if state is PredictionState.DONE:
            try:
                self.lastReport = json.loads(Path(self._run.result["report"]).read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError) as error:
                self.lastError = InputImageError(f"the prediction's report could not be read: {error}")
        else:
            self.lastError = self._run.error
        self._run = None
        self._cleanUp()
        return True

    def wait(self, timeout_s: float = 120.0) -> dict:
        """Block until the background prediction ends; returns the report or raises its error."""
        import time

        end = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() > end:
                self.cancel()
                raise InputImageError(f"the prediction took longer than {timeout_s:.0f} s and was cancelled")
            time.sleep(0.05)
        if self.lastError is not None:
            raise self.lastError
        return self.lastReport

    def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self.lastError = self._run.error
            self._run = None
        self._cleanUp()

    def _cleanUp(self) -> None:
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # ------------------------------------------------------------------ readout
    @staticmethod
    def summaryText(report: dict) -> str:
        from DuPLUSLib.prognosis.readout import PatientReadout

        return PatientReadout(**report["readout"]).summary_text()

    def showReadout(self, report: dict, scene=None):
        """The readout as a table node and a plot chart node (reused between runs); returns both."""
        scene = scene or slicer.mrmlScene
        table = self._readoutTable(report["readout"], scene)
        chart = self._readoutChart(report, scene)
        return table, chart

    @staticmethod
    def _node(scene, className: str, name: str):
        """The node this module made under ``name`` before, or a new one."""
        nodes = scene.GetNodesByClass(className)
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if node.GetAttribute(READOUT_ATTRIBUTE) == name:
                return node
        node = scene.AddNewNodeByClass(className, name)
        node.SetAttribute(READOUT_ATTRIBUTE, name)
        return node

    def _readoutTable(self, readout: dict, scene):
        table = self._node(scene, "vtkMRMLTableNode", "DuPLUS prognosis readout")
        table.RemoveAllColumns()
        rows = [("risk score", readout["risk_score"], np.nan, np.nan),
                ("hazard ratio", readout["hazard_ratio"], np.nan, np.nan),
                ("percentile", readout["percentile"], np.nan, np.nan)]
        for name, s in readout["survival"].items():
            rows.append((f"survival at {name}", s["estimate"], s["lower"], s["upper"]))
        columns = {"quantity": vtk.vtkStringArray(), "value": vtk.vtkDoubleArray(),
                   "lower 95%": vtk.vtkDoubleArray(), "upper 95%": vtk.vtkDoubleArray(), "text": vtk.vtkStringArray()}
        for name, array in columns.items():
            array.SetName(name)
        for quantity, value, lower, upper in rows:
            columns["quantity"].InsertNextValue(quantity)
            columns["value"].InsertNextValue(float(value))
            columns["lower 95%"].InsertNextValue(float(lower))
            columns["upper 95%"].InsertNextValue(float(upper))
            columns["text"].InsertNextValue(f"{value:.3f}" if np.isnan(lower) else f"{value:.3f} ({lower:.3f}-{upper:.3f})")
        columns["quantity"].InsertNextValue("risk group")
        columns["value"].InsertNextValue(np.nan)
        columns["lower 95%"].InsertNextValue(np.nan)
        columns["upper 95%"].InsertNextValue(np.nan)
        columns["text"].InsertNextValue(readout["risk_group"])
        for array in columns.values():
            table.AddColumn(array)
        table.SetAttribute("DuPLUS.RiskGroup", readout["risk_group"])
        return table

    def _curveTable(self, scene, name: str, times, columns: dict[str, list[float]], step: bool):
        table = self._node(scene, "vtkMRMLTableNode", name)
        table.RemoveAllColumns()
        x, values = np.asarray(times, float), {k: np.asarray(v, float) for k, v in columns.items()}
        if step:  # Kaplan-Meier curves are steps: repeat each time so the line draws flat-then-down
            x = np.repeat(x, 2)[1:]
            values = {k: np.repeat(v, 2)[:-1] for k, v in values.items()}
        for column, data in [("time", x), *values.items()]:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            for value in data:
                array.InsertNextValue(float(value))
            table.AddColumn(array)
        return table

    def _series(self, scene, name: str, table, column: str, colour, width: float = 2.0, dashed: bool = False):
        series = self._node(scene, "vtkMRMLPlotSeriesNode", name)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("time")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash if dashed else slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetLineWidth(width)
        series.SetColor(*colour)
        return series

    def _readoutChart(self, report: dict, scene):
        readout, reference = report["readout"], report["reference"]
        chart = self._node(scene, "vtkMRMLPlotChartNode", "DuPLUS prognosis Kaplan-Meier")
        chart.RemoveAllPlotSeriesNodeIDs()
        for curve in reference["curves"]:
            colour = GROUP_COLOURS.get(curve["label"], (0.3, 0.3, 0.3))
            table = self._curveTable(scene, f"KM {curve['label']} risk", curve["timeline"],
                                     {"survival": curve["survival"], "lower": curve["lower"], "upper": curve["upper"]},
                                     step=True)
            label = f"{curve['label']} risk (n={curve['patients']}, at risk {'/'.join(map(str, curve['at_risk']))})"
            chart.AddAndObservePlotSeriesNodeID(self._series(scene, label, table, "survival", colour).GetID())
            for bound in ("lower", "upper"):
                chart.AddAndObservePlotSeriesNodeID(
                    self._series(scene, f"{curve['label']} risk 95% {bound}", table, bound, colour, 1.0, True).GetID())
        patient = self._curveTable(scene, "Patient predicted survival", readout["curve_times"],
                                   {"survival": readout["curve"], "lower": readout["curve_lower"],
                                    "upper": readout["curve_upper"]}, step=False)
        chart.AddAndObservePlotSeriesNodeID(
            self._series(scene, f"this patient ({readout['risk_group']} risk)", patient, "survival", (0, 0, 0), 3.0).GetID())
        for bound in ("lower", "upper"):
            chart.AddAndObservePlotSeriesNodeID(
                self._series(scene, f"this patient 95% {bound}", patient, bound, (0, 0, 0), 1.0, True).GetID())
        chart.SetTitle("Kaplan-Meier by risk group (training cohort) and this patient")
        chart.SetXAxisTitle(f"time ({reference['time_unit']})")
        chart.SetYAxisTitle("overall survival")
        chart.SetYAxisRangeAuto(False)
        chart.SetYAxisRange(0.0, 1.0)
        return chart

    def showContributions(self, report: dict, scene=None):
        """What drove this patient's risk: a table node and a bar chart node (one bar per covariate,
        its contribution to the log-hazard against the average training patient); reused between runs."""
        scene = scene or slicer.mrmlScene
        contributions = report["readout"].get("contributions", [])
        table = self._node(scene, "vtkMRMLTableNode", "DuPLUS prognosis contributions")
        table.RemoveAllColumns()
        columns = {"covariate": vtk.vtkStringArray(), "value": vtk.vtkStringArray(),
                   "contribution": vtk.vtkDoubleArray(), "index": vtk.vtkDoubleArray()}
        for name, array in columns.items():
            array.SetName(name)
        for index, item in enumerate(contributions):
            columns["covariate"].InsertNextValue(f"{item['name']} = {item['value']}")
            columns["value"].InsertNextValue(str(item["value"]))
            columns["contribution"].InsertNextValue(float(item["contribution"]))
            columns["index"].InsertNextValue(float(index))
        for array in columns.values():
            table.AddColumn(array)
        chart = self._node(scene, "vtkMRMLPlotChartNode", "DuPLUS prognosis contributions")
        chart.RemoveAllPlotSeriesNodeIDs()
        series = self._node(scene, "vtkMRMLPlotSeriesNode", "contribution to log-hazard")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        series.SetXColumnName("index")
        series.SetYColumnName("contribution")
        series.SetLabelColumnName("covariate")
        series.SetColor(0.78, 0.16, 0.16)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle("What drove this patient's risk (log-hazard vs the average training patient)")
        chart.SetXAxisTitle("covariate (largest effect first)")
        chart.SetYAxisTitle("contribution to log-hazard")
        return table, chart

    @staticmethod
    def showChartInPlotView(chart) -> None:
        """Switch the layout to show the plot (inside the Slicer application only)."""
        if IN_SLICER_APPLICATION:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    @classmethod
    def showChartsSideBySide(cls, kaplanMeierChart, contributionChart) -> None:
        """The Kaplan-Meier chart and the contribution bars in two plot views side by side (Slicer only);
        if the layout cannot be made, the Kaplan-Meier chart alone, with a warning in the log."""
        if not IN_SLICER_APPLICATION:
            return
        try:
            layoutManager = slicer.app.layoutManager()
            layoutNode = layoutManager.layoutLogic().GetLayoutNode()
            if not layoutNode.IsLayoutDescription(SIDE_BY_SIDE_LAYOUT_ID):
                layoutNode.AddLayoutDescription(SIDE_BY_SIDE_LAYOUT_ID, SIDE_BY_SIDE_LAYOUT)
            layoutManager.setLayout(SIDE_BY_SIDE_LAYOUT_ID)
            for index, chart in enumerate((kaplanMeierChart, contributionChart)):
                layoutManager.plotWidget(index).mrmlPlotViewNode().SetPlotChartNodeID(chart.GetID())
        except (AttributeError, RuntimeError) as error:
            logging.warning(f"DuPLUS Prognosis: two plot views could not be laid out ({error}); "
                            f"showing the Kaplan-Meier chart only")
            cls.showChartInPlotView(kaplanMeierChart)


# ----------------------------------------------------------------------------------- self-test
class DuPLUSPrognosisTest(ScriptedLoadableModuleTest):
    """Registered with Slicer's CI (WITH_GENERIC_TESTS + slicer_add_python_unittest)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PredictAndShowReadout()
        self.test_ImpossibleAgeIsRefused()

    def test_PredictAndShowReadout(self) -> None:
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
