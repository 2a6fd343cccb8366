"""Shared pytest fixtures: a real, headless MRML scene from the ``slicer-core`` wheel.

Tests that need Slicer's MRML take the ``mrml_scene`` fixture: a fresh scene per test with the
Colors, Volumes and Segmentations module logics registered (segments cannot be made before the
Segmentations logic exists), ``slicer.mrmlScene`` set to it, and the small ``slicer.modules``
namespace that ``slicer.util``'s segment helpers look up. Nothing is mocked: the nodes are Slicer's.
Without ``slicer-core`` installed those tests are skipped, the rest of the suite still runs.

The module folders (``DuPLUSSegment/``, ``DuPLUSPrognosis/``) are put on ``sys.path`` so tests
import the scripted modules the way Slicer does, by file name.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
for module_folder in ("DuPLUSSegment", "DuPLUSPrognosis"):
    path = REPOSITORY / module_folder
    if path.is_dir() and str(path) not in sys.path:
        sys.path.insert(0, str(path))


class _ModuleEntry:
    """What ``slicer.modules.<name>`` offers outside Slicer: just ``logic()``."""

    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


@pytest.fixture
def mrml_scene():
    """A fresh headless MRML scene, installed as ``slicer.mrmlScene`` for the test's duration."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core")

    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = application.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    logics = {
        "Colors": colors,
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
    }
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(application)
        application.SetModuleLogic(name, logic)

    saved = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules", "app")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        colors=_ModuleEntry(colors),
        volumes=_ModuleEntry(logics["Volumes"]),
        segmentations=_ModuleEntry(logics["Segmentations"]),
    )
    scene._duplus_application_logic = application  # keep the logics alive with the scene
    scene._duplus_logics = logics
    try:
        yield scene
    finally:
        scene.Clear(True)
        for name, value in saved.items():
            if value is None and hasattr(slicer, name):
                delattr(slicer, name)
            elif value is not None:
                setattr(slicer, name, value)


@pytest.fixture
def keep_signal_handlers():
    """``duplus segment`` run in-process installs SIGINT/SIGTERM handlers; give pytest its own back."""
    import signal

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
