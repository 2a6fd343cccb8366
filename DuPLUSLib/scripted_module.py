"""What a DuPLUS scripted module needs from Slicer, with stand-ins where only ``slicer-core`` exists.

Both module files import their base classes from here, so the Logic classes import and run under
the ``slicer-core`` wheel (MRML without Qt) that the test suite uses, and inside the application
nothing changes. Besides :mod:`DuPLUSLib.mrml`, this is the only library module that imports slicer;
no model code depends on it.
"""

from __future__ import annotations

import unittest

import slicer

__all__ = [
    "Choice",
    "IN_SLICER_APPLICATION",
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
    "ScriptedLoadableModuleWidget",
    "VTKObservationMixin",
    "WithinRange",
    "parameterNodeWrapper",
    "qt",
    "translate",
    "tr",
    "vtk",
]

try:  # the Slicer application: Qt, CTK and the scripted-module base classes
    import ctk  # noqa: F401
    import qt
    import vtk
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    IN_SLICER_APPLICATION = getattr(slicer, "app", None) is not None
except ImportError:  # slicer-core only: the Logic still works, the GUI classes are never used
    import vtk

    qt = None
    IN_SLICER_APPLICATION = False

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        def __init__(self, parent=None):
            self.parent = parent

    ScriptedLoadableModuleTest = unittest.TestCase  # type: ignore[misc,assignment]

    class VTKObservationMixin:  # type: ignore[no-redef]
        def __init__(self):
            pass


try:
    from slicer.i18n import tr
    from slicer.i18n import translate
except ImportError:  # outside the application: strings stay as written

    def tr(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:  # noqa: ARG001
        return text


try:
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
except ImportError:  # stand-ins that keep what Slicer's validators keep, for the headless contract test

    def parameterNodeWrapper(cls):  # type: ignore[no-redef]
        return cls

    class Choice:  # type: ignore[no-redef]
        """Slicer's ``Choice`` validator: the value must be one of ``choices``."""

        def __init__(self, choices):
            self.choices = choices

        def __repr__(self) -> str:
            return f"Choice({self.choices})"

    class WithinRange:  # type: ignore[no-redef]
        """Slicer's ``WithinRange`` validator: ``minimum <= value <= maximum``."""

        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

        def __repr__(self) -> str:
            return f"WithinRange({self.minimum}, {self.maximum})"
