"""The modules against Slicer's own rules, read from Slicer's source, where no Slicer can run here.

* every ``.ui`` binding satisfies the parameterNodeWrapper GUI connectors (``slicer_connectors``);
* the module files stay thin: wiring only, the work in :mod:`DuPLUSLib.slicer`;
* the Extensions Index entries (``DuPLUS.s4ext``, ``DuPLUS.json``) and the CMake metadata agree,
  and a LICENSE is at the root (the index's checker requires one).
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
import typing
from pathlib import Path

import pytest

from slicer_connectors import binding_problems, connector_problem, ui_bindings

DuPLUSSegment = pytest.importorskip("DuPLUSSegment")
DuPLUSPrognosis = pytest.importorskip("DuPLUSPrognosis")

REPOSITORY = Path(__file__).resolve().parents[2]
MODULES = {
    "DuPLUSSegment": (DuPLUSSegment, DuPLUSSegment.DuPLUSSegmentParameterNode),
    "DuPLUSPrognosis": (DuPLUSPrognosis, DuPLUSPrognosis.DuPLUSPrognosisParameterNode),
}


def ui_path(module: str) -> Path:
    return REPOSITORY / module / "Resources" / "UI" / f"{module}.ui"


# ----------------------------------------------------------------------------- GUI connectors
@pytest.mark.parametrize("module", MODULES)
def test_every_ui_binding_has_a_slicer_connector(module):
    _, parameter_class = MODULES[module]
    assert ui_bindings(ui_path(module)), "the .ui binds nothing"
    assert binding_problems(ui_path(module), parameter_class) == []


def test_the_rules_refuse_the_prognosis_panel_as_it_was(tmp_path):
    """The bindings the Prognosis panel had before (plain str on combo boxes, str on the path edit,
    unbounded floats) are exactly what Slicer's connectors refuse."""
    old_ui = tmp_path / "old.ui"
    old_ui.write_text(textwrap.dedent("""\
        <ui version="4.0"><widget class="qMRMLWidget" name="Old">
         <widget class="QComboBox" name="sex"><property name="SlicerParameterName"><string>sex</string></property></widget>
         <widget class="QDoubleSpinBox" name="age"><property name="SlicerParameterName"><string>age</string></property></widget>
         <widget class="ctkPathLineEdit" name="model"><property name="SlicerParameterName"><string>modelFolder</string></property></widget>
        </widget></ui>"""), encoding="utf-8")

    class OldParameterNode:
        sex: str = ""
        age: float = 60.0
        modelFolder: str = ""

    problems = binding_problems(old_ui, OldParameterNode)
    assert len(problems) == 3
    assert "needs the Choice annotation" in problems[0]
    assert "needs WithinRange" in problems[1]
    assert "ctkPathLineEdit needs a pathlib type" in problems[2]


def test_connector_rules_accept_what_slicer_accepts():
    from DuPLUSLib.scripted_module import Choice, WithinRange

    assert connector_problem("QComboBox", typing.Annotated[str, Choice(["a", "b"])], "a") is None
    assert "not among the choices" in connector_problem("QComboBox", typing.Annotated[str, Choice(["a"])], "z")
    assert connector_problem("ctkPathLineEdit", Path) is None
    assert connector_problem("QDoubleSpinBox", typing.Annotated[float, WithinRange(0, 1)], 0.5) is None
    assert "outside WithinRange" in connector_problem("QDoubleSpinBox", typing.Annotated[float, WithinRange(0, 1)], 2.0)
    assert "needs bool" in connector_problem("QCheckBox", str)
    assert "no Slicer GUI connector" in connector_problem("QListWidget", list)


def test_prognosis_form_offers_the_library_vocabularies_and_ranges():
    import xml.etree.ElementTree as ElementTree

    from DuPLUSLib.prognosis.ehr import EHRValidationError
    from DuPLUSLib.prognosis import ehr
    from DuPLUSLib.prognosis.form import FORM_CHOICES, FORM_RANGES

    hints = typing.get_type_hints(DuPLUSPrognosis.DuPLUSPrognosisParameterNode, include_extras=True)
    bound = {b.parameter: b.widget_class for b in ui_bindings(ui_path("DuPLUSPrognosis"))}
    assert set(FORM_CHOICES) | set(FORM_RANGES) == set(ehr.EHR_FIELDS)
    for field, choices in FORM_CHOICES.items():
        assert bound[field] == "QComboBox"
        (choice,) = typing.get_args(hints[field])[1:]
        assert tuple(choice.choices) == choices and choices[0] == ""
    assert "0" in FORM_CHOICES["stage"]  # the copy the form used to keep had lost stage 0
    for field, (low, high) in FORM_RANGES.items():
        assert bound[field] == "QDoubleSpinBox"
        (within,) = typing.get_args(hints[field])[1:]
        assert (within.minimum, within.maximum) == (low, high)
    assert FORM_RANGES["pack_years"][0] < ehr.PACK_YEARS_RANGE[0]  # its "not recorded" value
    assert FORM_RANGES["age"][0] < ehr.AGE_RANGE[0]
    spin_boxes = {w.get("name"): {prop.get("name"): "".join(prop.itertext()).strip() for prop in w.iter("property")}
                  for w in ElementTree.parse(ui_path("DuPLUSPrognosis")).iter("widget")}
    for field in ("age", "pack_years"):  # the box opens on "not recorded", at the bottom of its range
        box = spin_boxes[field]
        assert float(box["minimum"]) == float(box["value"]) == FORM_RANGES[field][0], field
        assert box["specialValueText"] == "not recorded", field
    with pytest.raises(EHRValidationError, match="age is required"):  # a form left as it opens predicts nothing
        DuPLUSPrognosis.DuPLUSPrognosisLogic.validateForm({"age": FORM_RANGES["age"][0], "stage": "III"})
    assert DuPLUSPrognosis.DuPLUSPrognosisLogic.validateForm(
        {"age": 60.0, "pack_years": FORM_RANGES["pack_years"][0], "sex": "", "ecog": "2"}) == {"age": 60.0, "ecog": 2}


@pytest.mark.parametrize("module", MODULES)
def test_ui_has_every_widget_the_module_file_uses(module):
    import xml.etree.ElementTree as ElementTree

    widgets = {w.get("name") for w in ElementTree.parse(ui_path(module)).iter("widget")}
    source = (REPOSITORY / module / f"{module}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used and used <= widgets, f"missing in the .ui: {sorted(used - widgets)}"


# ----------------------------------------------------------------------------- thin module files
THIN_LIMITS = {"DuPLUSSegment": 360, "DuPLUSPrognosis": 215}  # SlicerNNUnet-like; the Segment widget fills its prompt cascade, both wire "Where to run"
PLUMBING = {"subprocess", "psutil", "tempfile", "shutil", "json", "importlib", "threading", "queue", "torch",
            "numpy", "SimpleITK"}


@pytest.mark.parametrize("module", MODULES)
def test_module_files_stay_thin_wiring_only(module):
    path = REPOSITORY / module / f"{module}.py"
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= THIN_LIMITS[module]
    tree = ast.parse(source)
    top_imports = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_imports |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_imports.add(node.module.split(".")[0])
    assert not top_imports & PLUMBING, f"{module}.py does work that belongs in DuPLUSLib.slicer: {top_imports & PLUMBING}"
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes == {module, f"{module}ParameterNode", f"{module}Logic", f"{module}Widget", f"{module}Test"}
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Logic")
    assert [f.name for f in logic.body if isinstance(f, ast.FunctionDef)] == ["getParameterNode"]


def test_logic_classes_live_in_the_library_and_keep_the_module_name():
    from DuPLUSLib.slicer.prognosis_logic import PrognosisLogic
    from DuPLUSLib.slicer.segment_logic import SegmentLogic

    assert issubclass(DuPLUSSegment.DuPLUSSegmentLogic, SegmentLogic)
    assert issubclass(DuPLUSPrognosis.DuPLUSPrognosisLogic, PrognosisLogic)
    assert SegmentLogic(runner=object()).moduleName == "DuPLUSSegment"  # the parameter node's singleton tag
    assert PrognosisLogic(runner=object()).moduleName == "DuPLUSPrognosis"


# ----------------------------------------------------------------------------- extension metadata
def s4ext_fields() -> dict[str, str]:
    text = (REPOSITORY / "DuPLUS.s4ext").read_text(encoding="utf-8")
    return dict(line.split(" ", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def cmake_extension_fields() -> dict[str, str]:
    text = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'set\(EXTENSION_(\w+) "([^"]*)"\)', text))


def test_a_license_file_is_at_the_root_and_matches_the_package_licence():
    licence = (REPOSITORY / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Permission is hereby granted, free of charge" in licence
    pyproject = (REPOSITORY / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = \{ text = "MIT" \}$', pyproject, flags=re.MULTILINE)


def test_s4ext_json_and_cmake_describe_the_same_extension():
    s4ext, cmake = s4ext_fields(), cmake_extension_fields()
    entry = json.loads((REPOSITORY / "DuPLUS.json").read_text(encoding="utf-8"))
    # Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: these keys only; two required.
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    pairs = {
        "category": (entry["category"], s4ext["category"], cmake["CATEGORY"]),
        "scm url": (entry["scm_url"], s4ext["scmurl"]),
        "revision": (entry["scm_revision"], s4ext["scmrevision"]),
        "scm type": (entry.get("scm_type", "git"), s4ext["scm"]),
        "dependencies": (" ".join(entry["build_dependencies"]), s4ext["depends"], cmake["DEPENDS"]),
        "build folder": (entry["build_subdirectory"], s4ext["build_subdirectory"]),
        "enabled": (str(int(entry.get("enabled", True))), s4ext["enabled"]),
        "homepage": (s4ext["homepage"], cmake["HOMEPAGE"]),
        "contributors": (s4ext["contributors"], cmake["CONTRIBUTORS"]),
        "description": (s4ext["description"], cmake["DESCRIPTION"]),
        "icon": (s4ext["iconurl"], cmake["ICONURL"]),
        "screenshots": (s4ext["screenshoturls"], cmake["SCREENSHOTURLS"]),
    }
    for name, values in pairs.items():
        assert len({v.strip() for v in values}) == 1, f"{name} differs: {values}"
    assert s4ext["depends"].strip() == "PyTorch"
    assert (REPOSITORY / "Resources/Icons/DuPLUS.png").is_file()


def test_contributors_are_written_name_and_organisation():
    form = re.compile(r"^[^(),]+ \([^()]+\)$")  # "Jane Roe (Superware)", as the index asks
    lists = [cmake_extension_fields()["CONTRIBUTORS"].split(", "), s4ext_fields()["contributors"].split(", "),
             DuPLUSSegment.CONTRIBUTORS, DuPLUSPrognosis.CONTRIBUTORS]
    for contributors in lists:
        assert contributors and all(form.match(c.strip()) for c in contributors), contributors


def test_module_categories_and_sample_data_use_current_slicer_names():
    segment = (REPOSITORY / "DuPLUSSegment/DuPLUSSegment.py").read_text(encoding="utf-8")
    prognosis = (REPOSITORY / "DuPLUSPrognosis/DuPLUSPrognosis.py").read_text(encoding="utf-8")
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in segment
    assert 'translate("qSlicerAbstractCoreModule", "Quantification")' in prognosis  # not under Segmentation
    assert "loadFileTypes=" in segment and "loadFileType=" not in segment  # loadFileType is deprecated


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_only_files_that_exist_and_registers_the_self_test(module):
    text = (REPOSITORY / module / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", module)
    assert "WITH_GENERIC_TESTS" in text
    for name in re.findall(r"^\s+(\S+\.(?:py|png|ui))\s*$", text, flags=re.MULTILINE):
        assert (REPOSITORY / module / name).is_file(), name
    assert "slicer_add_python_unittest" in (REPOSITORY / module / "Testing/Python/CMakeLists.txt").read_text(encoding="utf-8")


def test_one_stage_enum_and_one_table_of_progress_spans():
    from DuPLUSLib.progress import PROGRESS_SPANS, Stage, overall_percent

    assert set(PROGRESS_SPANS) == set(Stage)
    segment = [Stage.LOADING, Stage.PREPROCESSING, Stage.INFERENCE, Stage.POSTPROCESSING, Stage.WRITING, Stage.IMPORTING]
    bar = [overall_percent(stage, f) for stage in segment for f in (0.0, 0.5, 1.0)]
    assert bar == sorted(bar) and bar[0] == 0 and bar[-1] == 100
    assert overall_percent("predicting", 1.0) <= overall_percent("writing", 0.0)
    assert overall_percent("something new", 0.5) == 50 and overall_percent("inference", 7.0) == 90
    sources = [*(REPOSITORY / "DuPLUSLib").rglob("*.py"), REPOSITORY / "DuPLUSSegment/DuPLUSSegment.py",
               REPOSITORY / "DuPLUSPrognosis/DuPLUSPrognosis.py"]
    tables = [p.name for p in sources if re.search(r"""["']inference["']\s*:\s*\(""", p.read_text(encoding="utf-8"))]
    assert tables == [], f"a second table of progress spans in {tables}"
