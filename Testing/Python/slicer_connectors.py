"""Slicer's parameterNodeWrapper GUI-connector rules, as plain Python, for checking ``.ui`` bindings.

A widget in a ``.ui`` with the ``SlicerParameterName`` property is bound by ``connectGui`` to the
parameter of that name. Slicer picks the first registered connector whose ``canRepresent(widget,
datatype)`` accepts the pair and raises ``RuntimeError`` when none does, or when the chosen one
refuses the annotations; connectors are built all at once, so one bad binding leaves the whole
panel unconnected. The rules below are read from
``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py`` of Slicer 5.8, 5.10 and 5.12 (the
classes named in each comment); no Slicer code is copied. One rule is this project's own: a spin
box needs ``WithinRange`` (Slicer would set its limits to -inf..+inf).
"""

from __future__ import annotations

import enum
import pathlib
import typing
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

# ctkPathLineEditToPathConnector, ctkDirectoryButtonToPathConnector: these types exactly.
PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath,
              pathlib.PurePath, pathlib.PurePosixPath, pathlib.PureWindowsPath)
# QDoubleSpinBoxCtkSliderWidgetToFloatConnector (5.8; ...FloatIntConnector from 5.10, which also takes int).
FLOAT_WIDGETS = ("QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
                 "qMRMLSpinBox")
# The same connector raises "Cannot have a connection to ctkSliderWidget where the float types is unbounded".
BOUNDED_FLOAT_WIDGETS = ("ctkSliderWidget", "qMRMLSliderWidget")
SPIN_BOXES = ("QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox", "qMRMLSpinBox")


@dataclass(frozen=True)
class Binding:
    widget_class: str
    widget_name: str
    parameter: str


def ui_bindings(ui_path: Path | str) -> list[Binding]:
    """Every widget of a Qt Designer file that carries a ``SlicerParameterName``."""
    bindings = []
    for widget in ElementTree.parse(ui_path).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings.append(Binding(widget.get("class"), widget.get("name"), prop.find("string").text))
    return bindings


def split_annotated(datatype) -> tuple[object, tuple]:
    if typing.get_origin(datatype) is typing.Annotated:
        base, *extras = typing.get_args(datatype)
        return base, tuple(extras)
    return datatype, ()


def _find(extras, name: str):
    return next((e for e in extras if type(e).__name__ == name), None)


def _is_node_type(datatype) -> bool:
    # qMRMLNodeComboBoxToNodeConnector: a vtkMRMLNode subclass, or a Union of them (Optional too).
    if typing.get_origin(datatype) is typing.Union:
        return all(_is_node_type(t) for t in typing.get_args(datatype) if t is not type(None))
    return isinstance(datatype, type) and any(c.__name__ == "vtkMRMLNode" for c in datatype.__mro__)


def connector_problem(widget_class: str, datatype, default=None) -> str | None:
    """Why ``connectGui`` would fail (or bind badly) for this widget class and annotation; None when fine."""
    base, extras = split_annotated(datatype)
    choice, within = _find(extras, "Choice"), _find(extras, "WithinRange")
    if widget_class == "qMRMLNodeComboBox":
        return None if _is_node_type(base) else f"qMRMLNodeComboBox needs a MRML node type, not {base!r}"
    if widget_class in ("QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"):
        return None if base is bool else f"{widget_class} needs bool, not {base!r}"
    if widget_class in ("QComboBox", "ctkComboBox"):
        # QComboBoxToEnumConnector, else QComboBoxToStringableConnector: "requires the Choice annotation".
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return None
        if base not in (int, float, str, bool):
            return f"{widget_class} needs an Enum or int/float/str/bool with Choice, not {base!r}"
        if choice is None:
            return f"{widget_class} bound to {base.__name__} needs the Choice annotation"
        if default is not None and default not in choice.choices:
            return f"default {default!r} is not among the choices {list(choice.choices)}"
        return None
    if widget_class in ("ctkPathLineEdit", "ctkDirectoryButton"):
        return None if base in PATH_TYPES else f"{widget_class} needs a pathlib type, not {base!r}"
    if widget_class in ("QLineEdit", "QLabel", "QTextEdit"):  # QLineEditToStrConnector and friends
        return None if base is str else f"{widget_class} needs str, not {base!r}"
    if widget_class in ("QSpinBox", "QSlider"):  # QSliderOrSpinBoxToIntConnector
        if base is not int:
            return f"{widget_class} needs int, not {base!r}"
    elif widget_class in FLOAT_WIDGETS:
        if base is not float:
            return f"{widget_class} needs float, not {base!r}"
    else:
        return f"no Slicer GUI connector takes a {widget_class}"
    if within is None and (widget_class in SPIN_BOXES or widget_class in BOUNDED_FLOAT_WIDGETS or widget_class == "QSlider"):
        return f"{widget_class} bound to {base.__name__} needs WithinRange (else its limits become -inf..+inf)"
    if within is not None and default is not None and not within.minimum <= default <= within.maximum:
        return f"default {default!r} is outside WithinRange({within.minimum}, {within.maximum})"
    return None


def binding_problems(ui_path: Path | str, parameter_class) -> list[str]:
    """Every binding of the ``.ui`` that Slicer's ``connectGui`` would refuse for ``parameter_class``."""
    hints = typing.get_type_hints(parameter_class, include_extras=True)
    problems = []
    for binding in ui_bindings(ui_path):
        where = f"{binding.widget_name} ({binding.widget_class}) -> {binding.parameter}"
        if binding.parameter not in hints:
            problems.append(f"{where}: no such parameter")
            continue
        problem = connector_problem(binding.widget_class, hints[binding.parameter],
                                    getattr(parameter_class, binding.parameter, None))
        if problem:
            problems.append(f"{where}: {problem}")
    return problems
