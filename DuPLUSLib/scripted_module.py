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
    "BackgroundRunWidget",
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
    "select_data",
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


class BackgroundRunWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The life cycle both DuPLUS module widgets share around a run in the background.

    A run outlives the module being shown: ``exit`` only unbinds the GUI from the parameter node,
    and the poll timer keeps reporting. A closing scene stops the timer before anything else (a
    tick must not touch the closing scene) and cancels the run; ``cleanup`` (reload, quit) shuts
    the logic's worker down. A subclass makes ``self.logic`` in ``setup``, then calls
    :meth:`startWatching`, and implements ``setParameterNode`` and ``onPollTimer``.
    """

    pollIntervalMs = 100

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = self._parameterNodeGuiTag = None

    def startWatching(self) -> None:
        """Start the poll timer's wiring and the scene-close observers, then bind the parameter node."""
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(self.pollIntervalMs)
        self.pollTimer.connect("timeout()", self.onPollTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:  # setup ran
            self.pollTimer.stop()
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        """Unbind the GUI but keep the node: a run started here goes on and still reports."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.pollTimer.stop()  # the logic cancels its run itself; no tick may touch the closing scene
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller=None, event=None) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())


def select_data(comboBox, data) -> bool:
    """Make the combo box item whose data is ``data`` current (without a signal when it already is);
    whether there is one."""
    index = comboBox.findData(data)
    if index >= 0 and comboBox.currentIndex != index:
        comboBox.setCurrentIndex(index)
    return index >= 0
