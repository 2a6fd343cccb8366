"""DuPLUS Prognosis's logic: EHR form (and tumour) in, risk readout as MRML table and chart out.

The module file (``DuPLUSPrognosis.py``) wires its GUI to :class:`PrognosisLogic`; scripts and
tests use the logic directly. A prediction runs in the same background worker as segmentation, as
a ``prognosis`` request (:mod:`DuPLUSLib.worker`), through the runner the logic is given
(:class:`~DuPLUSLib.segment_process.BackgroundRunner` by default): the form is validated and the
image inputs written here, before any process starts; torch and the text encoder load there.

While a run goes, the logic observes the scene: closing it cancels the run.

A model trained on a cohort with further columns asks for them: :meth:`PrognosisLogic.extraFormFields`
lists them from the model's saved column list, :class:`ExtraCovariatesForm` builds the "Further
covariates (from the model)" widgets, and their values live in the parameter node as JSON under
``EXTRA_PARAMETER``. The readout adds what drove the patient's risk (:meth:`showContributions`),
shown beside the Kaplan-Meier chart (:meth:`showChartsSideBySide`).
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

from ..errors import CancelledError, DuPLUSError, OutputPathError
from ..scripted_module import IN_SLICER_APPLICATION, ScriptedLoadableModuleLogic, qt, vtk
from ..scripted_module import tr as _
from ..segment_process import BackgroundRunner, RunCallbacks, WorkerError
from .install import PROGNOSIS_REQUIREMENTS, DependencyInstaller
from .segment_logic import JobRunner, _startup_environment
from .scene_watch import CancelOnSceneClose
from .server_connection import ServerConnection

__all__ = ["PrognosisLogic", "ExtraCovariatesForm", "READOUT_ATTRIBUTE", "EXTRA_PARAMETER", "GROUP_COLOURS"]

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


class PrognosisLogic(ServerConnection, CancelOnSceneClose, ScriptedLoadableModuleLogic):
    """Form -> validated EHR; nodes -> files; background prediction; report -> MRML table and plot.

    Console use::

        logic = PrognosisLogic()
        report = logic.predict({"age": 63, "stage": "III", "hpv": "positive"})   # in this process
        table, chart = logic.showReadout(report)

    or in the background: ``logic.predictAsync(ehr, onFinished=...)`` then ``logic.poll()`` from a
    timer (or ``logic.wait()``), as DuPLUS Segment does.
    """

    def __init__(self, runner: JobRunner | None = None, python: str | None = None, threads: int = 0,
                 installer: DependencyInstaller | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleName = MODULE_NAME
        if runner is None:
            runner = BackgroundRunner(python=python, env=_startup_environment(), warm=True, threads=threads,
                                      job_name="prediction")
        self.localRunner = runner
        self.runner = runner  # the runner of the current or last prediction: the local one, or a RemoteRunner
        self.installer = installer or DependencyInstaller(PROGNOSIS_REQUIREMENTS, requester="DuPLUS Prognosis")
        self._folder: str | None = None
        self._sceneWatch: tuple[Any, int] | None = None
        self.lastReport: dict | None = None
        self.lastError: BaseException | None = None

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def validateForm(values: dict[str, Any], modelFolder: str | None = None) -> dict[str, Any]:
        """The form's values as a clean dict; raises EHRValidationError naming the field.

        Not-recorded values (``""``, None, pack-years below its range) are left out. Values beyond
        the EHR schema (the generated form) are checked against the model's saved columns, so the
        model's ``prognosis.json`` is read only when such values are given or a folder is named.
        """
        from ..prognosis.ehr import EHR_FIELDS, parse_ehr
        from ..prognosis.form import form_values_to_ehr, validate_patient

        given = form_values_to_ehr(values)
        if not modelFolder and set(given) <= set(EHR_FIELDS):
            return parse_ehr(given).to_dict()
        return validate_patient(given, modelFolder or None)

    # ------------------------------------------------------------ generated form
    @staticmethod
    def extraFormFields(modelFolder: str | None = None) -> list:
        """The inputs the form needs beyond the EHR schema: one per extra column of the model, typed
        (number with its limits, choice of the levels the model knows, free text). Reads only the
        model's ``prognosis.json`` (no torch in Slicer's process)."""
        from ..prognosis.form import extra_form_fields

        return extra_form_fields(modelFolder or None)

    @staticmethod
    def setExtraValues(parameterNode, values: dict[str, Any]) -> None:
        """Keep the generated form's values in the (scene-saved) parameter node, empty ones left out."""
        clean = {k: v for k, v in values.items() if v not in ("", None)}
        _rawNode(parameterNode).SetParameter(EXTRA_PARAMETER, json.dumps(clean, sort_keys=True))

    @staticmethod
    def extraValues(parameterNode) -> dict[str, Any]:
        """The generated form's values kept in the parameter node ({} when none or unreadable)."""
        node = _rawNode(parameterNode)
        text = node.GetParameter(EXTRA_PARAMETER) if node is not None else ""
        try:
            values = json.loads(text) if text else {}
        except ValueError:
            return {}
        return values if isinstance(values, dict) else {}

    @staticmethod
    def tumourMasks(segmentationNode, referenceVolumeNode) -> dict[str, np.ndarray]:
        """GTVp/GTVn masks on the reference volume's grid, found by DuPLUS tag or by name."""
        from .. import mrml
        from ..ontology import load_ontology
        from ..prognosis.image_features import TUMOUR_KEYS, NoTumourError

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
        from .. import mrml
        from ..imageio import SegmentMask, write_image, write_segmentation
        from ..ontology import load_ontology

        image = mrml.volume_image_from_node(volumeNode)
        masks = self.tumourMasks(segmentationNode, volumeNode)
        ontology = load_ontology()
        folder = Path(folder)
        image_path, seg_path = folder / "image.nrrd", folder / "tumour.seg.nrrd"
        write_image(image, image_path)
        write_segmentation([SegmentMask(ontology.structures[k], m) for k, m in masks.items()], image, seg_path)
        return image_path, seg_path

    # ------------------------------------------------------------------ dependencies
    def missingDependencies(self) -> list[str]:
        return [r.pip for r in self.installer.missing()]

    def installDependencies(self, confirm: Callable[[str], bool]) -> None:
        """Install what a prediction needs after ``confirm(question)`` agrees; raises
        ``MissingDependencyError`` when declined or failed."""
        self.installer.ensure(confirm)

    # ------------------------------------------------------------------ prediction
    def predict(self, ehr: dict[str, Any], volumeNode=None, segmentationNode=None,
                modelFolder: str | None = None) -> dict:
        """Predict in this process (scripts, self-test); returns the report the worker would write."""
        from ..prognosis.bundle import load_prognosis_bundle
        from ..prognosis.pipeline import predict_patient, report_payload

        values = self.validateForm(ehr, modelFolder)
        bundle = load_prognosis_bundle(modelFolder or None)
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
                     modelFolder: str | None = None,
                     onProgress: Callable[[str, float, str], None] | None = None,
                     onFinished: Callable[[dict], None] | None = None,
                     onError: Callable[[BaseException], None] | None = None,
                     onCancelled: Callable[[], None] | None = None,
                     server: str | None = None, apiKey: str | None = None) -> str:
        """Validate, write the inputs, start the background prediction; then :meth:`poll` until it
        returns False (or :meth:`wait`). The outcome is in ``lastReport`` / ``lastError`` and the
        callbacks. Form errors raise here, before any process starts. With ``server`` (and
        ``apiKey``) the server's prognosis model predicts (health record only), with the same
        callbacks, errors and report."""
        if self.isBusy:
            raise WorkerError("a prediction is already running; wait for it or cancel it")
        if modelFolder and not Path(modelFolder).is_dir():
            from ..errors import ModelBundleError

            raise ModelBundleError(f"prognosis model folder '{modelFolder}' does not exist")
        clean = self.validateForm(ehr, modelFolder)  # errors reach the user before any process starts
        if server:
            from ..remote import check_remote_prognosis_request

            check_remote_prognosis_request({"image": volumeNode is not None, "model": modelFolder})
        self._cleanUp()
        folder = Path(tempfile.mkdtemp(prefix="DuPLUSPrognosis-"))
        self._folder = str(folder)
        self.lastReport, self.lastError = None, None
        try:
            image = segmentation = None
            if volumeNode is not None:
                image, segmentation = self.writeImageInputs(volumeNode, segmentationNode, folder)
            request = {"kind": "prognosis", "ehr": clean, "report": str(folder / "report.json"),
                       "model": modelFolder or None, "image": str(image) if image else None,
                       "segmentation": str(segmentation) if segmentation else None, "overwrite": True}
            callbacks = RunCallbacks(
                on_progress=onProgress,
                on_done=lambda event: self._finished(event, onFinished),
                on_error=lambda error: self._failed(error, onError),
                on_cancelled=lambda: self._cancelled(onCancelled),
            )
            self.runner = self._runnerFor(server, apiKey)
            requestId = self.runner.submit(request, callbacks)
        except BaseException:
            self._cleanUp()
            raise
        self._watchScene(volumeNode.GetScene() if volumeNode is not None else _current_scene())
        return requestId

    def _runnerFor(self, server: str | None, apiKey: str | None) -> JobRunner:
        if not server:
            return self.localRunner
        from ..remote import RemoteRunner, ServerClient

        return RemoteRunner(ServerClient(server, api_key=apiKey), job_name="prediction")

    @property
    def isBusy(self) -> bool:
        return self.runner.busy

    @property
    def elapsedSeconds(self) -> float:
        return self.runner.elapsed_s

    def poll(self) -> bool:
        """Deliver the worker's news to the callbacks; returns whether the prediction is still going."""
        return self.runner.poll()

    def wait(self, timeout_s: float | None = 120.0) -> dict:
        """Block until the background prediction ends; returns the report or raises its error."""
        self.runner.wait(timeout_s=timeout_s)
        if self.lastError is not None:
            raise self.lastError
        return self.lastReport

    def cancel(self) -> None:
        """End the prediction's process tree; nothing is shown."""
        self.runner.cancel()
        self._cleanUp()

    def shutdown(self) -> None:
        self.runner.shutdown()
        if self.runner is not self.localRunner:
            self.localRunner.shutdown()
        self._unwatchScene()
        self._cleanUp()

    # ------------------------------------------------------------------ outcome
    def _finished(self, event: dict, onFinished) -> None:
        try:
            report = json.loads(Path(event["report"]).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise OutputPathError(f"the prediction's report could not be read: {error}") from None
        finally:
            self._endRun()
        self.lastReport = report
        if onFinished:
            onFinished(report)

    def _failed(self, error: BaseException, onError) -> None:
        self._endRun()
        self.lastError = error
        if onError:
            onError(error)
        else:
            logging.error(f"DuPLUS Prognosis: {error}")

    def _cancelled(self, onCancelled) -> None:
        self._endRun()
        self.lastError = CancelledError("prediction cancelled")
        if onCancelled:
            onCancelled()

    def _endRun(self) -> None:
        self._unwatchScene()
        self._cleanUp()

    def _cleanUp(self) -> None:
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # ------------------------------------------------------------------ readout
    @staticmethod
    def summaryText(report: dict) -> str:
        from ..prognosis.readout import PatientReadout

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
        nodes.UnRegister(scene)  # the scene hands over a new collection; as slicer.util.getNodesByClass does
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


class ExtraCovariatesForm:
    """The "Further covariates (from the model)" section of the Prognosis panel: one typed widget per
    further column of the chosen model (:meth:`PrognosisLogic.extraFormFields`), rebuilt when the
    model folder changes; every edit is written to the parameter node (:meth:`PrognosisLogic.setExtraValues`).

    The module widget creates it under its ``.ui`` and calls :meth:`rebuild`; nothing else to wire.
    """

    def __init__(self, logic: PrognosisLogic, parentLayout, afterWidget) -> None:
        import ctk

        self.logic = logic
        self.parameterNode = None
        self.widgets: dict[str, tuple[Any, Any]] = {}
        self._folder: str | None = None
        self.collapsibleButton = ctk.ctkCollapsibleButton()
        self.collapsibleButton.text = _("Further covariates (from the model)")
        self.formLayout = qt.QFormLayout(self.collapsibleButton)
        parentLayout.insertWidget(parentLayout.indexOf(afterWidget) + 1, self.collapsibleButton)
        self.collapsibleButton.visible = False

    def rebuild(self, folder: str | None, parameterNode, force: bool = False) -> None:
        """Rows for ``folder``'s further columns (empty or ``"."``: the bundled model), filled from the node."""
        folder = "" if str(folder or "") == "." else str(folder or "")  # an empty pathlib.Path reads as "."
        self.parameterNode = parameterNode
        if folder == self._folder and not force:
            return
        self._folder = folder
        while self.formLayout.rowCount() > 0:
            self.formLayout.removeRow(0)
        self.widgets = {}
        try:
            fields = self.logic.extraFormFields(folder or None)
        except DuPLUSError as error:
            self.formLayout.addRow(qt.QLabel(_("The model does not load: {error}").format(error=error)))
            self.collapsibleButton.visible = True
            return
        saved = self.logic.extraValues(parameterNode) if parameterNode is not None else {}
        for field in fields:
            widget = self._widget(field, saved.get(field.name))
            self.formLayout.addRow(f"{field.label}:", widget)
            self.widgets[field.name] = (field, widget)
        self.collapsibleButton.visible = bool(fields)

    def _widget(self, field, value):
        if field.widget == "choice":
            widget = qt.QComboBox()
            for choice in field.choices:
                widget.addItem(choice)
            widget.setCurrentText("" if value is None else str(value))
            widget.currentTextChanged.connect(self.onValueChanged)
        else:
            widget = qt.QLineEdit()
            widget.placeholderText = _("not recorded")
            if field.widget == "number":
                validator = qt.QDoubleValidator(field.minimum, field.maximum, field.decimals, widget)
                validator.notation = qt.QDoubleValidator.StandardNotation
                widget.setValidator(validator)
            widget.text = "" if value is None else str(value)
            widget.textChanged.connect(self.onValueChanged)
        widget.toolTip = field.tooltip
        return widget

    def values(self) -> dict[str, Any]:
        return {name: (w.currentText if f.widget == "choice" else w.text) for name, (f, w) in self.widgets.items()}

    def onValueChanged(self, *_args) -> None:
        if self.parameterNode is not None:
            self.logic.setExtraValues(self.parameterNode, self.values())


def _rawNode(parameterNode):
    """The vtkMRMLScriptedModuleNode behind a parameterNodeWrapper object (or the node itself)."""
    return getattr(parameterNode, "parameterNode", parameterNode)


def _current_scene():
    return getattr(slicer, "mrmlScene", None)
