"""Errors a user can act on.

Each is raised where bad input enters the library, with a message that names the problem and what
to do. The command line prints the message and exits non-zero; the Slicer modules show it.
"""

from __future__ import annotations


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
