"""What the modules' self-tests (``DuPLUSSegmentTest``, ``DuPLUSPrognosisTest``) need, and when to skip.

Slicer's build farm runs every extension's self-test in a Slicer with none of torch, MONAI or
transformers, and installs nothing during tests. A test that needs the engine must then skip with
a reason, not fail (SlicerTotalSegmentator keeps its inference test off there for the same reason).
"""

from __future__ import annotations

import importlib.util
import unittest
from typing import Callable, Sequence

__all__ = ["SEGMENT_ENGINE", "PROGNOSIS_ENGINE", "missing_packages", "skip_unless_installed"]

# What a real run needs in Slicer's Python: the segmentation worker, and a prognosis prediction.
SEGMENT_ENGINE = ("torch", "monai", "transformers")
PROGNOSIS_ENGINE = ("torch", "transformers")


def missing_packages(modules: Sequence[str], find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    return [name for name in modules if find_spec(name) is None]


def skip_unless_installed(test: unittest.TestCase, modules: Sequence[str],
                          find_spec: Callable[[str], object] = importlib.util.find_spec) -> None:
    """Skip ``test`` (``unittest.SkipTest``) naming the packages this Slicer lacks, if any."""
    missing = missing_packages(modules, find_spec)
    if missing:
        test.skipTest(
            f"needs {', '.join(missing)}, not installed in this Slicer (as on Slicer's build farm); "
            "open the module and run it once to install them"
        )
