"""From a volume and prompts to named masks: the path every user takes.

    image -> checked -> canonical grid at the model spacing -> normalised -> sliding window
    (Gaussian blending, a batch of windows, one backbone pass for all prompts of a context)
    -> per-prompt probabilities -> back onto the input grid -> threshold -> masks + confidence

The work is reported through ``progress(stage, fraction, message)`` and can be stopped between
windows through ``cancel() -> bool``; a stopped run raises :class:`CancelledError`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .bundle import ModelBundle, load_bundle
from .devices import autocast_dtype, select_device
from .errors import CancelledError, ResourceLimitError, UnknownPromptError
from .imageio import (
    SegmentMask,
    VolumeImage,
    atomic_output,
    check_output_path,
    read_image,
)
from .ontology import Prompt, load_ontology
from .body_region import ct_body_region, cut_to_region
from .postprocessing import DroppedParts, keep_largest_part
from .sliding_window import sliding_window, window_count
from .preprocessing import (
    check_image_values,
    normalise_intensity,
    resample_mask_above,
    resample_onto,
    resample_to_spacing,
)

__all__ = ["ProgressCallback", "SegmentationResult", "Segmenter", "segment_file"]

ProgressCallback = Callable[[str, float, str], None]
CancelCallback = Callable[[], bool]


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


@dataclass
class SegmentationResult:
    reference: VolumeImage
    segments: list[SegmentMask]
    prompts: list[Prompt]
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    probabilities: dict[str, np.ndarray] | None = None  # prompt key -> float32 [k, j, i], if asked
    dropped: dict[str, DroppedParts] = field(default_factory=dict)  # prompt key -> what keeping its largest part removed
    outside_body_ml: dict[str, float] = field(default_factory=dict)  # prompt key -> found outside the body, removed

    def report(self) -> dict:
        """What the JSON report says: one entry per segment, volumes in millilitres, and for a
        structure the model keeps as its largest part what that removed (``check``: enough to look), and
        for a prompt cut to the body region what it found outside (``outside_body_ml``; None: not cut)."""
        voxel_ml = float(np.prod(self.reference.spacing)) / 1000.0
        entries = []
        for prompt, segment in zip(self.prompts, self.segments):
            count = segment.voxel_count()
            structure = segment.structure
            dropped = self.dropped.get(prompt.key)
            entries.append(
                {
                    "prompt": prompt.key,
                    "structure": structure.key,
                    "name": structure.name,
                    "color": list(structure.color),
                    "terminology": structure.terminology.as_slicer_tag(),
                    "voxels": count,
                    "volume_ml": round(count * voxel_ml, 3),
                    "confidence": None if segment.confidence is None else round(segment.confidence, 4),
                    "found": count > 0,
                    "largest_part_only": dropped is not None,
                    "dropped_parts": dropped.parts if dropped else 0,
                    "dropped_ml": round(dropped.volume_ml, 3) if dropped else 0.0,
                    "check": bool(dropped and dropped.worth_checking),
                    "outside_body_ml": self.outside_body_ml.get(prompt.key),
                }
            )
        return {
            "segments": entries,
            "device": self.device,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "input": {
                "shape_ijk": list(self.reference.shape_ijk),
                "spacing_mm": list(self.reference.spacing),
            },
        }


class Segmenter:
    """A loaded model ready to segment; keep one alive to segment many volumes without reloading."""

    def __init__(
        self,
        bundle: ModelBundle | None = None,
        device: str = "auto",
        precision: str = "auto",
        overlap: float | None = None,
        window_batch: int | None = None,
        memory_limit_bytes: int | None = None,
    ):
        self.device = select_device(device)
        self.bundle = bundle if bundle is not None else load_bundle()
        self.bundle.network.to(self.device).eval()
        self.settings = self.bundle.config.inference
        self.autocast = autocast_dtype(self.device, precision)
        self.overlap = self.settings.overlap if overlap is None else overlap
        self.window_batch = window_batch or self.settings.window_batch
        self.memory_limit_bytes = memory_limit_bytes

    @property
    def ontology(self):
        return self.bundle.ontology

    def parse_prompts(self, texts: Sequence[str | Prompt], modality: str | None = None) -> list[Prompt]:
        prompts = self.ontology.parse_many(texts, modality)
        if not prompts:
            raise UnknownPromptError("no prompt given; e.g. -p CT/abdomen/liver")
        unknown_modality = [p for p in prompts if p.modality not in self.bundle.network.config.modalities]
        if unknown_modality:
            raise UnknownPromptError(
                f"this model has no {unknown_modality[0].modality} input; it knows "
                + ", ".join(self.bundle.network.config.modalities)
            )
        return prompts

    # ------------------------------------------------------------------------------------ run
    def segment(
        self,
        image: VolumeImage,
        prompts: Sequence[Prompt],
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        keep_probabilities: bool = False,
    ) -> SegmentationResult:
        progress = progress or _no_progress
        cancel = cancel or (lambda: False)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        check_image_values(image)
        prompts = list(prompts)
        if not prompts:
            raise UnknownPromptError("no prompt given")
        progress("preprocessing", 0.0, "resampling to the model grid")
        spacing = self.settings.spacing
        model_image = resample_to_spacing(image, spacing)
        self._check_memory(image, model_image, len(prompts), keep_probabilities)
        timings["preprocessing"] = time.perf_counter() - start

        probabilities_model: dict[str, np.ndarray] = {}
        groups = _group_by_context(prompts)
        windows_total = sum(self._count_windows(model_image.array.shape) for _ in groups)
        done = [0]
        start = time.perf_counter()
        normalised_by_modality: dict[str, np.ndarray] = {}
        for (modality, region), group in groups.items():
            if modality not in normalised_by_modality:
                normalised_by_modality[modality] = normalise_intensity(
                    model_image.array, self.settings.normalisation[modality]
                )
            probs = self._sliding_window(
                normalised_by_modality[modality], modality, region, group, progress, cancel, done, windows_total
            )
            for prompt, prob in zip(group, probs):
                probabilities_model[prompt.key] = prob
        timings["inference"] = time.perf_counter() - start

        start = time.perf_counter()
        segments: list[SegmentMask] = []
        kept: dict[str, np.ndarray] = {}
        dropped: dict[str, DroppedParts] = {}
        outside_body_ml: dict[str, float] = {}
        model_voxel_ml = float(np.prod(model_image.spacing)) / 1000.0
        cut_to_body = {p.key for p in prompts if p.modality in self.settings.body_constraint}  # only CT, so far
        body = ct_body_region(model_image.array) if cut_to_body else None
        for index, prompt in enumerate(prompts):
            if cancel():
                raise CancelledError("segmentation cancelled")
            progress("postprocessing", index / len(prompts), f"resampling {prompt.structure} to the input grid")
            probability = probabilities_model.pop(prompt.key)
            if prompt.key in cut_to_body:
                probability, outside_body_ml[prompt.key] = cut_to_region(
                    probability, body, self.settings.threshold, model_voxel_ml
                )
            if prompt.structure in self.settings.largest_component:
                probability, dropped[prompt.key] = keep_largest_part(probability, self.settings.threshold, model_voxel_ml)
            on_model_grid = model_image.with_array(probability)
            structure = self.ontology.structures[prompt.structure]
            if keep_probabilities:
                prob = resample_onto(on_model_grid, image, "linear", 0.0)
                mask = prob >= self.settings.threshold
                kept[prompt.key] = prob
                segments.append(SegmentMask(structure, mask, float(prob[mask].mean()) if mask.any() else None))
            else:  # only where the mask can be, and kept there: most of the post-processing on a big CT
                values, confidence, box = resample_mask_above(on_model_grid, image, self.settings.threshold)
                segments.append(SegmentMask(structure, values, confidence, box, image.array.shape))
        timings["postprocessing"] = time.perf_counter() - start
        progress("postprocessing", 1.0, "done")
        return SegmentationResult(
            reference=image,
            segments=segments,
            prompts=prompts,
            timings=timings,
            device=str(self.device),
            probabilities=kept if keep_probabilities else None,
            dropped=dropped,
            outside_body_ml=outside_body_ml,
        )

    # ------------------------------------------------------------------------------ internals
    def _count_windows(self, shape: Sequence[int]) -> int:
        windows = window_count(shape, self.settings.patch_size, self.overlap)
        return (windows + self.window_batch - 1) // self.window_batch

    @torch.inference_mode()
    def _sliding_window(
        self,
        array: np.ndarray,
        modality: str,
        region: str,
        prompts: list[Prompt],
        progress: ProgressCallback,
        cancel: CancelCallback,
        done: list[int],
        total: int,
    ) -> list[np.ndarray]:
        embeddings = self.bundle.embeddings
        context = embeddings.get([self.ontology.context_text(modality, region)])[0].to(self.device)
        targets = embeddings.get([self.ontology.target_text(p) for p in prompts]).to(self.device)
        network = self.bundle.network
        names = ", ".join(p.structure for p in prompts)

        def predict(windows: torch.Tensor) -> torch.Tensor:
            if cancel():
                raise CancelledError("segmentation cancelled")
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                logits = network(windows, modality, context, targets)
            done[0] += 1
            progress("inference", min(done[0] / total, 1.0), f"{modality} {region}: {names}")
            return torch.sigmoid(logits.float())

        tensor = torch.from_numpy(array)[None, None].to(self.device)
        # Windows that reach past the scan see what lies outside a body (air in CT, no signal in
        # MRI, PET and ultrasound), as the training patches do, not repeated edge slices.
        output = sliding_window(tensor, self.settings.patch_size, self.window_batch, predict, self.overlap,
                                pad_value=float(array.min()))
        return [channel.cpu().numpy() for channel in output[0]]

    def _check_memory(self, image: VolumeImage, model_image: VolumeImage, n_prompts: int, keep_probabilities: bool) -> None:
        """Refuse, with advice, a volume whose buffers would not fit instead of letting the OS kill us.

        Kept probabilities cost a float32 map and a mask per structure on the input grid (5 bytes a
        voxel each), far more than the model grid on a fine scan."""
        import psutil

        model_voxels = model_image.array.size
        input_voxels = image.array.size
        needed = 4 * (model_voxels * (2 * n_prompts + 3) + input_voxels * 3)
        if keep_probabilities:
            needed += 5 * input_voxels * n_prompts
        available = psutil.virtual_memory().available if self.memory_limit_bytes is None else self.memory_limit_bytes
        if needed > 0.8 * available:
            raise ResourceLimitError(
                f"this volume needs about {needed / 2**30:.1f} GiB for {n_prompts} structure(s) "
                f"({'x'.join(map(str, image.shape_ijk))} voxels, {model_voxels / 1e6:.1f} M on the model grid) "
                f"but only {available / 2**30:.1f} GiB is free; crop the volume to the region of interest, "
                "ask for fewer structures at once" + (", write no probability maps" if keep_probabilities else "")
                + ", or close other programs"
            )


def _group_by_context(prompts: Sequence[Prompt]) -> dict[tuple[str, str], list[Prompt]]:
    groups: dict[tuple[str, str], list[Prompt]] = {}
    for prompt in prompts:
        groups.setdefault((prompt.modality, prompt.region), []).append(prompt)
    return groups


# ------------------------------------------------------------------------------- file in, file out
def segment_file(
    input_path: str | os.PathLike[str],
    prompts: Sequence[str | Prompt],
    output_path: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    adapter: str | os.PathLike[str] | None = None,
    segmenter: Segmenter | None = None,
    device: str = "auto",
    modality: str | None = None,
    report: str | os.PathLike[str] | None = None,
    preview: str | os.PathLike[str] | None = None,
    probabilities_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    series_uid: str | None = None,
    format: str | None = None,
    split: bool = False,
) -> dict:
    """Segment one image file and write the segmentation (plus report, preview, probabilities).

    ``format`` is ``seg.nrrd``, ``nifti`` or ``dicom-seg`` (:mod:`.formats`); by default it follows
    the output's ending (``.nii``/``.nii.gz``: NIfTI, ``.dcm``: DICOM SEG, else ``.seg.nrrd``).
    Outputs are checked before the long work starts, and each is written under a temporary name
    and renamed on success, so a failure or cancel leaves nothing half-written.
    """
    from .formats import check_format_input, check_output_files, format_for_path, write_result
    from .imageio import write_image

    started = time.perf_counter()
    progress = progress or _no_progress
    format = format or format_for_path(output_path)
    prompts = load_ontology().parse_many(prompts, modality)  # parsed once: a typo fails now, not after the model loads
    check_output_files(output_path, format, [p.structure for p in prompts], split, overwrite)
    for path in (Path(p) for p in (report, preview) if p is not None):
        check_output_path(path, overwrite)
    if probabilities_dir is not None:
        _check_probability_folder(Path(probabilities_dir), prompts, modality, overwrite)
    check_format_input(format, input_path, Path(input_path).is_dir())
    timings: dict[str, float] = {}
    progress("loading", 0.0, f"reading {Path(input_path).name}")
    image = read_image(input_path, series_uid)
    timings["reading"] = time.perf_counter() - started
    if segmenter is None:
        progress("loading", 0.5, "loading the model")
        mark = time.perf_counter()
        segmenter = Segmenter(_load_model(model, adapter), device=device)
        timings["model_loading"] = time.perf_counter() - mark
    parsed = segmenter.parse_prompts(prompts, modality)
    result = segmenter.segment(image, parsed, progress, cancel, keep_probabilities=probabilities_dir is not None)
    if cancel and cancel():
        raise CancelledError("segmentation cancelled")
    progress("writing", 0.0, f"writing {Path(output_path).name}")
    mark = time.perf_counter()
    written = write_result(result, output_path, format, split=split, overwrite=overwrite)
    result.timings = {**timings, **result.timings, "writing": time.perf_counter() - mark}
    summary = result.report()
    summary["input"]["path"] = str(Path(input_path).resolve())
    summary["format"] = format
    summary["split"] = bool(split and format == "nifti")
    summary["output"] = str(Path(output_path).resolve()) if not (format == "nifti" and split) else str(written[0].parent.resolve())
    summary["files"] = [str(p.resolve()) for p in written]
    summary["model"] = {
        "name": segmenter.bundle.config.name,
        "path": str(segmenter.bundle.path) if segmenter.bundle.path else None,
    }
    if probabilities_dir is not None and result.probabilities:
        folder = Path(probabilities_dir)
        folder.mkdir(exist_ok=True)
        summary["probabilities"] = {}
        for key, prob in result.probabilities.items():
            path = folder / _probability_file_name(key)
            write_image(image.with_array(prob.astype(np.float32)), path, overwrite=overwrite)
            summary["probabilities"][key] = str(path.resolve())
    if preview is not None:
        from .preview import render_preview

        progress("writing", 0.5, f"writing {Path(preview).name}")
        summary["preview"] = str(render_preview(image, result.segments, preview).resolve())
    if report is not None:
        with atomic_output(report, overwrite=True) as temporary:
            temporary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        summary["report"] = str(Path(report).resolve())
    progress("writing", 1.0, "done")
    return summary


def _load_model(model: str | os.PathLike[str] | None, adapter: str | os.PathLike[str] | None) -> ModelBundle | None:
    if adapter is None:
        return load_bundle(model) if model else None
    from .training.adapters import load_bundle_with_adapter  # adapters are optional: imported only when used

    return load_bundle_with_adapter(model, adapter)


def _probability_file_name(prompt_key: str) -> str:
    return f"{prompt_key.replace('/', '_')}.nrrd"


def _check_probability_folder(folder: Path, prompts: Sequence[str], modality: str | None, overwrite: bool) -> None:
    """The probability-map folder must be usable before the long work starts, not after."""
    from .errors import OutputPathError

    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"'{folder}' is a file; --probabilities needs a folder")
    if not folder.exists():
        check_output_path(folder, overwrite=False)
        return
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"cannot write probability maps into '{folder}': not writable")
    for prompt in load_ontology().parse_many(prompts, modality):
        check_output_path(folder / _probability_file_name(prompt.key), overwrite)
