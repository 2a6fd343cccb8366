"""Errors a user can act on.

Each is raised where bad input enters the library, with a message that names the problem and what
to do. The command line prints the message and exits non-zero; the Slicer modules show it.

Errors cross the process boundary between the Slicer module and its background worker by name
(the worker's ``error`` event). :data:`ERROR_MODULES` is the explicit registry of every library
error class: its name and the module that defines it. :func:`error_class` resolves a name there,
importing the defining module only when such an error arrives, so the Slicer process imports
nothing heavy up front. A test checks that every ``DuPLUSError`` subclass is registered.
"""

from __future__ import annotations

import importlib

__all__ = [
    "DuPLUSError",
    "UnknownPromptError",
    "InputImageError",
    "ModelBundleError",
    "OutputPathError",
    "ResourceLimitError",
    "DeviceError",
    "CancelledError",
    "MissingDependencyError",
    "ERROR_MODULES",
    "error_class",
]


class DuPLUSError(Exception):
    """Base of every error the library raises on purpose."""


class UnknownPromptError(DuPLUSError, ValueError):
    """A prompt that names no known, valid modality/region/structure; the message lists the choices."""


class InputImageError(DuPLUSError, ValueError):
    """An input image that cannot be segmented: unreadable, not 3D, empty, constant, NaN..."""


class ModelBundleError(DuPLUSError):
    """A model folder that is missing, incomplete, corrupt, tampered with or unsafe."""


class OutputPathError(DuPLUSError, OSError):
    """An output that cannot be written, or exists and may not be overwritten."""


class ResourceLimitError(DuPLUSError, MemoryError):
    """Work that would not fit in the memory at hand; the message says what to change."""


class DeviceError(DuPLUSError, RuntimeError):
    """A compute device that was asked for and is not available."""


class CancelledError(DuPLUSError):
    """The user stopped the work; nothing was written."""


class MissingDependencyError(DuPLUSError, RuntimeError):
    """A Python package the work needs is not installed, and was not installed (declined or failed)."""


# Every library error class, by name -> the module that defines it. The worker reports errors by
# class name; the Slicer side turns the name back into the class through this table.
ERROR_MODULES: dict[str, str] = {
    "DuPLUSError": __name__,
    "UnknownPromptError": __name__,
    "InputImageError": __name__,
    "ModelBundleError": __name__,
    "OutputPathError": __name__,
    "ResourceLimitError": __name__,
    "DeviceError": __name__,
    "CancelledError": __name__,
    "MissingDependencyError": __name__,
    "WorkerError": "DuPLUSLib.segment_process",
    "WorkerTimeoutError": "DuPLUSLib.segment_process",
    "ProtocolError": "DuPLUSLib.worker",
    "UsageError": "DuPLUSLib.cli",
    "BatchError": "DuPLUSLib.batch",
    "ConfigError": "DuPLUSLib.training.config",
    "DatasetError": "DuPLUSLib.training.decathlon",
    "RunFolderError": "DuPLUSLib.training.loop",
    "DataSpecError": "DuPLUSLib.training.evaluate",
    "DatasetFetchError": "DuPLUSLib.datasets.sources",
    "ChecksumError": "DuPLUSLib.datasets.fetch",
    "RegistryUnreachableError": "DuPLUSLib.datasets.fetch",
    "LayoutError": "DuPLUSLib.datasets.layouts.common",
    "EHRValidationError": "DuPLUSLib.prognosis.ehr",
    "CohortError": "DuPLUSLib.prognosis.cohort",
    "CovariateError": "DuPLUSLib.prognosis.covariates",
    "NoTumourError": "DuPLUSLib.prognosis.image_features",
    "ServerError": "DuPLUSLib.server.protocol",
    "AuthenticationError": "DuPLUSLib.server.protocol",
    "ProtocolMismatchError": "DuPLUSLib.server.protocol",
    "JobNotFoundError": "DuPLUSLib.server.protocol",
    "JobStateError": "DuPLUSLib.server.protocol",
    "QueueFullError": "DuPLUSLib.server.protocol",
    "UnsupportedFormatError": "DuPLUSLib.server.protocol",
    "ServerUnreachableError": "DuPLUSLib.remote",
    "ServerSettingsError": "DuPLUSLib.server.cli",
}


def error_class(name: str) -> type[DuPLUSError] | None:
    """The registered library error class called ``name``, or None for any other name.

    A class whose module cannot be imported here (its packages are missing in this process) is
    treated as unknown: the caller then reports the error under its name as text.
    """
    module_name = ERROR_MODULES.get(name)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    cls = getattr(module, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, DuPLUSError) else None
