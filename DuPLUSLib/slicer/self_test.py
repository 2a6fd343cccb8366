"""What the modules' self-tests (``DuPLUSSegmentTest``, ``DuPLUSPrognosisTest``) need, and when to skip.

Slicer's build farm runs every extension's self-test in a Slicer with none of torch, MONAI or
transformers, and installs nothing during tests. A test that needs the engine must then skip with
a reason, not fail (SlicerTotalSegmentator keeps its inference test off there for the same reason).

Slicer runs a self-test two ways: ctest loads the ``Test`` class with ``unittest`` (each ``test_*``
method, ``setUp`` before each, skips reported as skips), and the module's "Reload and Test" button
calls ``runTest``, which :func:`run_each` implements the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import unittest
from typing import Callable, Sequence

__all__ = ["SEGMENT_ENGINE", "PROGNOSIS_ENGINE", "check_sample_segmentation", "missing_packages", "run_each",
           "skip_unless_installed"]

# What a real run needs in Slicer's Python: the segmentation worker, and a prognosis prediction.
SEGMENT_ENGINE = ("torch", "monai", "transformers")
PROGNOSIS_ENGINE = ("torch", "transformers")


def missing_packages(modules: Sequence[str], find_spec: Callable[[str], object] | None = None) -> list[str]:
    find_spec = find_spec or importlib.util.find_spec
    return [name for name in modules if find_spec(name) is None]


def skip_unless_installed(test: unittest.TestCase, modules: Sequence[str]) -> None:
    """Skip ``test`` (``unittest.SkipTest``) naming the packages this Slicer lacks, if any."""
    missing = missing_packages(modules)
    if missing:
        test.skipTest(
            f"needs {', '.join(missing)}, not installed in this Slicer (as on Slicer's build farm); "
            "open the module and run it once to install them"
        )


def run_each(test: unittest.TestCase, methods: Sequence[Callable[[], None]]) -> list[str]:
    """``runTest`` for the Reload-and-Test button: ``setUp`` before each method, skips reported
    (not raised as failures); returns the skip reasons."""
    skipped = []
    for method in methods:
        test.setUp()
        try:
            method()
        except unittest.SkipTest as reason:
            skipped.append(f"{method.__name__} skipped: {reason}")
            logging.info(skipped[-1])
            if hasattr(test, "delayDisplay"):
                test.delayDisplay(skipped[-1])
    return skipped


def check_sample_segmentation(test: unittest.TestCase, logic, prompts: Sequence[str], min_dice: float = 0.5) -> None:
    """Segment the bundled sample CT with ``logic`` (shut down afterwards) and check each segment:
    name and terminology from the ontology, and Dice against the sample's ground truth."""
    import slicer

    from .. import mrml
    from ..imageio import read_image, read_segmentation
    from ..ontology import load_ontology
    from ..samples import sample_labels_path, sample_volume_path

    volume = mrml.volume_node_from_image(read_image(sample_volume_path()), "DuPLUSSampleCTAbdomen")
    try:
        segmentation = logic.segment(volume, list(prompts))
    finally:
        logic.shutdown()
    ontology = load_ontology()
    segments = {s.structure: s for s in mrml.imported_segments(segmentation)}
    test.assertEqual(sorted(segments), sorted(p.rsplit("/", 1)[-1] for p in prompts))
    _, truth = read_segmentation(sample_labels_path(), ontology)
    for key, segment in segments.items():
        test.assertEqual(segment.name, ontology.structures[key].name)
        test.assertEqual(segment.terminology, ontology.structures[key].terminology.as_slicer_tag())
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment.segment_id, volume) > 0
        overlap = 2.0 * (mask & truth[key]).sum() / max(1, mask.sum() + truth[key].sum())
        test.assertGreater(overlap, min_dice, f"{key}: Dice {overlap:.2f} against the sample's ground truth")


def check_bad_inputs_refused(test: unittest.TestCase, logic) -> None:
    """No volume, and an unknown structure, are refused before any background work starts."""
    import numpy as np
    import slicer

    from ..errors import InputImageError, UnknownPromptError

    try:
        with test.assertRaises(InputImageError):
            logic.segment(None, ["CT/abdomen/liver"])
        volume = slicer.util.addVolumeFromArray(np.zeros((8, 8, 8), "int16"))
        with test.assertRaises(UnknownPromptError):
            logic.segment(volume, ["CT/abdomen/unicorn"])
        test.assertFalse(logic.isBusy)
    finally:
        logic.shutdown()
