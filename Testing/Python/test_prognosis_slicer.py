"""The DuPLUSPrognosis module's logic on a real headless MRML scene (slicer-core): inputs, table and plot nodes."""

import numpy as np
import pytest

from DuPLUSLib.imageio import VolumeImage
from DuPLUSLib.prognosis.ehr import EHRValidationError
from DuPLUSLib.prognosis.image_features import NoTumourError

DuPLUSPrognosis = pytest.importorskip("DuPLUSPrognosis")


@pytest.fixture(scope="module")
def larynx_report():
    """One real prediction with the bundled larynx model (loads the text encoder once for the module)."""
    import torch

    torch.set_num_threads(1)
    from DuPLUSLib.prognosis.bundle import load_prognosis_bundle
    from DuPLUSLib.prognosis.ehr import parse_ehr
    from DuPLUSLib.prognosis.pipeline import predict_patient, report_payload

    bundle = load_prognosis_bundle()
    return report_payload(predict_patient(bundle, parse_ehr({"age": 70, "stage": "IV", "site": "larynx"})), bundle)


def _volume_with_tumour(scene, tumour_name="GTVp", empty=False):
    import slicer
    from DuPLUSLib import mrml

    array = np.full((12, 16, 16), -50, np.int16)
    array[4:8, 5:10, 5:10] = 40
    image = VolumeImage(array, spacing=(1.5, 1.5, 2.0), origin=(10.0, -5.0, 3.0))
    volume = mrml.volume_node_from_image(image, "CT", scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumours")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment(tumour_name, tumour_name)
    mask = np.zeros(array.shape, np.uint8)
    if not empty:
        mask[4:8, 5:10, 5:10] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
    return volume, segmentation


def test_readout_becomes_a_table_node_with_risk_percentile_group_and_survival(mrml_scene, larynx_report):
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    table, _ = logic.showReadout(larynx_report, mrml_scene)
    assert table.IsA("vtkMRMLTableNode") and table.GetScene() is mrml_scene
    quantities = [table.GetCellText(row, 0) for row in range(table.GetNumberOfRows())]
    assert quantities == ["risk score", "hazard ratio", "percentile", "survival at 2 years",
                          "survival at 5 years", "risk group"]
    readout = larynx_report["readout"]
    assert float(table.GetCellText(3, 1)) == pytest.approx(readout["survival"]["2 years"]["estimate"], abs=1e-6)
    assert float(table.GetCellText(3, 2)) <= float(table.GetCellText(3, 1)) <= float(table.GetCellText(3, 3))
    assert table.GetCellText(5, 4) == readout["risk_group"] == table.GetAttribute("DuPLUS.RiskGroup")


def test_readout_becomes_a_chart_of_km_curves_per_group_and_the_patient(mrml_scene, larynx_report):
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    _, chart = logic.showReadout(larynx_report, mrml_scene)
    groups = len(larynx_report["reference"]["curves"])
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 3 * groups + 3
    names = [chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert any(n.startswith("high risk") for n in names) and any(n.startswith("this patient (") for n in names)
    patient = next(chart.GetNthPlotSeriesNode(i) for i, n in enumerate(names) if n.startswith("this patient ("))
    table = patient.GetTableNode()
    survival = [float(table.GetCellText(r, 1)) for r in range(table.GetNumberOfRows())]
    assert survival[0] == pytest.approx(1.0) and all(np.diff(survival) <= 1e-12)


def test_showing_a_second_readout_reuses_the_nodes(mrml_scene, larynx_report):
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    logic.showReadout(larynx_report, mrml_scene)
    count = mrml_scene.GetNumberOfNodes()
    logic.showReadout(larynx_report, mrml_scene)
    assert mrml_scene.GetNumberOfNodes() == count


def test_a_readout_holds_no_node_once_the_scene_is_closed(mrml_scene, larynx_report):
    """GetNodesByClass hands over a new collection; one not released keeps every node in it alive."""
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    table, chart = logic.showReadout(larynx_report, mrml_scene)
    logic.showReadout(larynx_report, mrml_scene)  # looks the nodes up again
    mrml_scene.Clear(0)
    assert table.GetReferenceCount() == 1 and chart.GetReferenceCount() == 1  # only these Python names


def test_tumour_masks_come_from_the_segmentation_node_on_the_volume_grid(mrml_scene):
    volume, segmentation = _volume_with_tumour(mrml_scene)
    masks = DuPLUSPrognosis.DuPLUSPrognosisLogic.tumourMasks(segmentation, volume)
    assert set(masks) == {"gtvp"} and masks["gtvp"].shape == (12, 16, 16) and masks["gtvp"].sum() == 100


def test_written_inputs_keep_geometry_and_tumour(mrml_scene, tmp_path):
    from DuPLUSLib.prognosis.image_features import read_case, tumour_measurements

    volume, segmentation = _volume_with_tumour(mrml_scene)
    image_path, seg_path = DuPLUSPrognosis.DuPLUSPrognosisLogic().writeImageInputs(volume, segmentation, tmp_path)
    image, masks = read_case(image_path, seg_path)
    values = tumour_measurements(image, masks)
    assert values["gtvp_volume_ml"] == pytest.approx(100 * 1.5 * 1.5 * 2.0 / 1000)
    assert values["gtvp_mean_intensity"] == pytest.approx(40)


@pytest.mark.parametrize("name, empty", [("Parotid gland left", False), ("GTVp", True)])
def test_segmentation_without_a_tumour_is_refused(mrml_scene, name, empty):
    volume, segmentation = _volume_with_tumour(mrml_scene, name, empty)
    with pytest.raises(NoTumourError, match="no non-empty tumour segment"):
        DuPLUSPrognosis.DuPLUSPrognosisLogic.tumourMasks(segmentation, volume)


def test_the_form_is_validated_before_anything_runs(mrml_scene):
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    with pytest.raises(EHRValidationError, match="age"):
        logic.predictAsync({"age": 212, "stage": "II"})
    assert not logic.isBusy
    assert logic.validateForm({"age": 60, "stage": "3", "hpv": "", "ecog": "1"}) == {"age": 60.0, "stage": "III", "ecog": 1}


def test_predict_button_path_runs_in_the_background_and_fills_the_scene(mrml_scene):
    """What Predict does: nodes -> files -> background 'duplus prognosis predict' -> table and chart nodes."""
    import sys

    volume, segmentation = _volume_with_tumour(mrml_scene)
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic(python=sys.executable)
    logic.predictAsync({"age": 72, "stage": "III", "site": "larynx"}, volume, segmentation)
    assert logic.isBusy
    report = logic.wait(timeout_s=120)
    assert report["readout"]["image_features"]["gtvp_volume_ml"] == pytest.approx(0.45)
    assert any("did not change the risk" in note for note in report["readout"]["notes"])  # an EHR-only model
    table, chart = logic.showReadout(report, mrml_scene)
    assert table.GetNumberOfRows() == 6 and chart.GetNumberOfPlotSeriesNodes() > 3
    assert "stage III" in logic.summaryText(report)


@pytest.fixture(scope="module")
def clinic_model(tmp_path_factory):
    """A model trained on the larynx cohort plus three extra columns (numeric, categorical, ordinal), saved."""
    import torch
    from DuPLUSLib.prognosis.cohort import cohort_from_frame, larynx_frame
    from DuPLUSLib.prognosis.features import encode_patients
    from DuPLUSLib.prognosis.model import PrognosisConfig
    from DuPLUSLib.prognosis.pipeline import train_bundle

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    frame = larynx_frame()
    frame["crp"] = rng.lognormal(2, 1, 90).round(1)
    frame["centre"] = rng.choice(["north", "south", "east"], 90)
    frame["grade"] = rng.choice(["well differentiated", "poorly differentiated"], 90)
    cohort = cohort_from_frame(frame, "time_years", "death")
    inputs = encode_patients(cohort.records, covariates=cohort.covariates, columns=cohort.extra_columns)
    bundle = train_bundle(inputs, cohort, PrognosisConfig(use=("numeric", "extra"), kind="coxph", n_bootstrap=2))
    return bundle.save(tmp_path_factory.mktemp("models") / "clinic")


def test_the_form_is_generated_from_a_saved_models_columns_on_a_real_scene(mrml_scene, clinic_model):
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    fields = logic.extraFormFields(str(clinic_model))
    assert [(f.name, f.widget) for f in fields] == [("crp", "number"), ("centre", "choice"), ("grade", "choice")]
    assert sorted(fields[1].choices) == ["", "east", "north", "south"] and fields[1].choices[0] == ""
    assert fields[2].choices == ["", "well differentiated", "poorly differentiated"]
    assert fields[0].minimum == 0 and fields[0].maximum > 0
    assert logic.extraFormFields(None) == []  # the bundled larynx model knows no extra column
    # the form's values live in the scene's parameter node
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "DuPLUSPrognosis")
    logic.setExtraValues(node, {"crp": "12.5", "centre": "south", "grade": ""})
    assert node.GetParameter(DuPLUSPrognosis.EXTRA_PARAMETER) == '{"centre": "south", "crp": "12.5"}'
    values = {"age": 66, "stage": "III", **logic.extraValues(node)}
    with pytest.raises(EHRValidationError, match="field 'centre': 'atlantis' is not a level this model knows"):
        logic.validateForm({**values, "centre": "atlantis"}, str(clinic_model))
    with pytest.raises(EHRValidationError, match="field 'crp': 'high' is not a number"):
        logic.validateForm({**values, "crp": "high"}, str(clinic_model))
    report = logic.predict(values, modelFolder=str(clinic_model))
    drivers = {c["name"]: c["value"] for c in report["readout"]["contributions"]}
    assert drivers["centre"] == "south" and drivers["crp"] == "12.5" and drivers["grade"] == "missing"
    assert any("not given: grade" in n for n in report["readout"]["notes"])
    table, chart = logic.showContributions(report, mrml_scene)
    assert table.GetNumberOfRows() == len(drivers) and chart.GetNumberOfPlotSeriesNodes() == 1
    assert table.GetCellText(0, 0).split(" = ")[0] == report["readout"]["contributions"][0]["name"]


def test_further_covariates_go_through_the_background_worker(mrml_scene, clinic_model):
    """Predict's path with a model that has further columns: validated here, served as a 'prognosis'
    request by the background worker, contributions back in the report and in the scene."""
    import sys

    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic(python=sys.executable, threads=1)
    try:
        with pytest.raises(EHRValidationError, match="field 'centre'"):
            logic.predictAsync({"age": 66, "centre": "atlantis"}, modelFolder=str(clinic_model))
        assert not logic.isBusy
        logic.predictAsync({"age": 66, "stage": "III", "crp": "12.5", "centre": "south", "grade": ""},
                           modelFolder=str(clinic_model))
        report = logic.wait(timeout_s=120)
    finally:
        logic.shutdown()
    drivers = {c["name"]: c["value"] for c in report["readout"]["contributions"]}
    assert drivers["centre"] == "south" and drivers["crp"] == "12.5" and drivers["grade"] == "missing"
    table, chart = logic.showContributions(report, mrml_scene)
    assert table.GetNumberOfRows() == len(drivers) and chart.GetNumberOfPlotSeriesNodes() == 1


def test_the_form_is_built_and_checked_without_torch_in_slicers_process(clinic_model):
    """Slicer's process reads only the model's prognosis.json for the generated form and its checks;
    the worker refuses a bad value the same way before it loads torch."""
    import json
    import subprocess
    import sys

    code = f"""
import json, sys
from DuPLUSLib.prognosis.form import extra_form_fields, validate_patient
from DuPLUSLib.worker import Worker
fields = [f.name for f in extra_form_fields({str(clinic_model)!r})]
clean = validate_patient({{"age": "66", "crp": "3", "centre": "north"}}, {str(clinic_model)!r})
events = []
Worker(events.append).handle_line(json.dumps({{"kind": "prognosis", "ehr": {{"age": 66, "crp": "high"}},
                                               "report": "unused.json", "model": {str(clinic_model)!r}}}))
print(json.dumps([fields, clean, events, "torch" in sys.modules]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fields, clean, events, torch_loaded = json.loads(done.stdout.splitlines()[-1])
    assert fields == ["crp", "centre", "grade"] and clean == {"age": 66.0, "crp": "3", "centre": "north"}
    assert events[-1]["error"] == "EHRValidationError" and "field 'crp': 'high' is not a number" in events[-1]["message"]
    assert not torch_loaded


class _Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class _FakeQt:
    """The few Qt classes ExtraCovariatesForm uses (PythonQt is not importable outside Slicer)."""

    class QFormLayout:
        def __init__(self, parent=None):
            self.rows = []

        def rowCount(self):
            return len(self.rows)

        def removeRow(self, index):
            del self.rows[index]

        def addRow(self, *items):
            self.rows.append(items)

    class QLabel:
        def __init__(self, text=""):
            self.text = text

    class QComboBox:
        def __init__(self):
            self.items, self.currentText, self.currentTextChanged, self.toolTip = [], "", _Signal(), ""

        def addItem(self, text):
            self.items.append(text)

        def setCurrentText(self, text):
            if text in self.items:
                self.currentText = text

    class QLineEdit:
        def __init__(self):
            self.text, self.placeholderText, self.textChanged, self.toolTip, self.validator = "", "", _Signal(), "", None

        def setValidator(self, validator):
            self.validator = validator

    class QDoubleValidator:
        StandardNotation = 0

        def __init__(self, low, high, decimals, parent=None):
            self.range, self.notation = (low, high, decimals), None


def test_the_further_covariates_panel_follows_the_model_and_keeps_its_values_in_the_node(
        mrml_scene, clinic_model, monkeypatch, tmp_path):
    import sys
    import types

    from DuPLUSLib.slicer import prognosis_logic

    monkeypatch.setattr(prognosis_logic, "qt", _FakeQt)
    monkeypatch.setitem(sys.modules, "ctk", types.SimpleNamespace(
        ctkCollapsibleButton=lambda: types.SimpleNamespace(text="", visible=True)))
    inserted = []
    layout = types.SimpleNamespace(indexOf=lambda widget: 3, insertWidget=lambda i, w: inserted.append((i, w)))
    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "DuPLUSPrognosis")
    logic.setExtraValues(node, {"centre": "east", "crp": "4"})  # as saved with a scene
    form = prognosis_logic.ExtraCovariatesForm(logic, layout, object())
    assert inserted == [(4, form.collapsibleButton)]  # right under the .ui

    form.rebuild("", node)  # the bundled model: nothing further to ask
    assert form.formLayout.rowCount() == 0 and not form.collapsibleButton.visible and form.values() == {}
    form.rebuild(str(clinic_model), node)
    assert [row[0] for row in form.formLayout.rows] == ["crp:", "centre:", "grade:"] and form.collapsibleButton.visible
    crp, centre, grade = (form.widgets[name][1] for name in ("crp", "centre", "grade"))
    assert crp.validator.range[0] == 0 and centre.items[0] == "" and "north" in centre.items
    assert form.values() == {"crp": "4", "centre": "east", "grade": ""}  # filled from the node
    grade.currentText = "poorly differentiated"
    grade.currentTextChanged.emit("poorly differentiated")
    assert logic.extraValues(node) == {"centre": "east", "crp": "4", "grade": "poorly differentiated"}
    assert logic.validateForm({"age": 60, **form.values()}, str(clinic_model))["grade"] == "poorly differentiated"

    (tmp_path / "prognosis.json").write_text("{not json", encoding="utf-8")
    form.rebuild(str(tmp_path), node)  # a broken model says so in the panel
    (label,) = form.formLayout.rows[0]
    assert "does not load" in label.text and form.widgets == {} and form.values() == {}
    form.rebuild(".", node)  # an empty path reads as "."; the bundled model again
    assert form.formLayout.rowCount() == 0 and not form.collapsibleButton.visible
