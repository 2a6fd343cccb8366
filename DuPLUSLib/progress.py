"""The stages a run reports, and where each sits on one 0-100 % progress bar.

The engine reports ``progress(stage, fraction, message)`` with ``fraction`` in 0..1 within the
stage. :data:`PROGRESS_SPANS` is the one table that places each stage on the overall bar; the
``duplus`` command's progress bar and the Slicer modules both read it.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Stage", "PROGRESS_SPANS", "overall_percent"]


class Stage(str, Enum):
    """A stage of a segmentation or prognosis run, as named in the worker's progress events."""

    LOADING = "loading"  # reading the input, loading the model
    PREPROCESSING = "preprocessing"  # resampling and normalising to the model grid
    INFERENCE = "inference"  # the sliding-window network passes
    POSTPROCESSING = "postprocessing"  # masks back onto the input grid
    PREDICTING = "predicting"  # prognosis: text encoding, image features, the survival head
    WRITING = "writing"  # the output files
    IMPORTING = "importing"  # Slicer: the result into the scene
    UPLOADING = "uploading"  # a remote run (duplus serve): the volume goes to the server
    QUEUED = "queued"  # a remote run: waiting for the jobs ahead of it on the server
    DOWNLOADING = "downloading"  # a remote run: the result comes back


# Percent of the overall bar at the start and end of each stage. Segmentation runs loading ->
# preprocessing -> inference -> postprocessing -> writing -> importing; prognosis runs loading ->
# predicting -> writing -> importing; a run on a server adds uploading and queued before, and
# downloading after, the worker's own stages. Stages a run skips leave their span empty on the bar.
PROGRESS_SPANS: dict[Stage, tuple[int, int]] = {
    Stage.UPLOADING: (0, 4),
    Stage.QUEUED: (4, 5),
    Stage.LOADING: (0, 10),  # on a server the model is warm: this stage is a blink after queued
    Stage.PREPROCESSING: (10, 15),
    Stage.INFERENCE: (15, 90),
    Stage.PREDICTING: (15, 90),
    Stage.POSTPROCESSING: (90, 96),
    Stage.WRITING: (96, 97),
    Stage.DOWNLOADING: (97, 98),
    Stage.IMPORTING: (98, 100),
}


def overall_percent(stage: str, fraction: float) -> int:
    """Where ``fraction`` (0..1) of ``stage`` lies on the overall bar; unknown stages span it all."""
    try:
        low, high = PROGRESS_SPANS[Stage(stage)]
    except ValueError:
        low, high = 0, 100
    fraction = min(max(float(fraction), 0.0), 1.0)
    return int(low + (high - low) * fraction)
