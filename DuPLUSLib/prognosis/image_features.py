"""Image features for prognosis: tumour measurements and the segmentation network's pooled features.

* **Measurements** (always): the volumes of the primary tumour (GTVp) and of the nodes (GTVn), in
  ml, log-transformed because survival risk grows with the order of magnitude of the tumour burden
  rather than linearly, and the mean intensity inside GTVp (HU on CT; necrosis lowers it). A patient
  without nodes has a GTVn volume of 0, not a missing value.
* **Network features** (optional, ``deep``): as in the DuPLUS paper's prognosis figure, the
  segmentation model's bottleneck features pooled inside the tumour: a box around the tumour is
  resampled to the model's grid, normalised as for segmentation, passed once through
  ``forward_features`` with the head-and-neck context prompt, the tumour mask is downsampled to the
  bottleneck grid, and the features are averaged inside it (GTVp and GTVn separately).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputImageError
from ..imageio import VolumeImage

__all__ = ["TUMOUR_KEYS", "MEASUREMENT_NAMES", "NoTumourError", "tumour_measurements", "measurements_vector",
           "pooled_network_features", "read_case"]

TUMOUR_KEYS = ("gtvp", "gtvn")
MEASUREMENT_NAMES = ("log_gtvp_volume_ml", "log_gtvn_volume_ml", "gtvp_mean_intensity")


class NoTumourError(InputImageError):
    """A segmentation with no (or empty) GTVp/GTVn segment: there is no tumour to measure."""


def read_case(image_path: str | Path, segmentation_path: str | Path) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    """The CT and its tumour masks resampled onto the CT grid; refuses a segmentation with no tumour."""
    from ..imageio import read_image, read_segmentation
    from ..ontology import load_ontology
    from ..preprocessing import resample_onto

    image = read_image(image_path)
    geometry, masks = read_segmentation(segmentation_path, load_ontology())
    tumours = {k: masks[k] for k in TUMOUR_KEYS if k in masks and masks[k].any()}
    if not tumours:
        found = ", ".join(sorted(masks)) or "none"
        raise NoTumourError(
            f"segmentation '{segmentation_path}' has no non-empty tumour segment (GTVp or GTVn); "
            f"its segments are: {found}. Segment the tumour first (DuPLUS Segment, CT/head_neck/gtvp)"
        )
    if not geometry.same_geometry(image):
        tumours = {k: resample_onto(geometry.with_array(m.astype(np.float32)), image, "linear", 0.0) >= 0.5
                   for k, m in tumours.items()}
    return image, tumours


def tumour_measurements(image: VolumeImage, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Volumes (ml) and mean GTVp intensity; ``masks`` are boolean ``[k, j, i]`` on ``image``'s grid."""
    if not any(np.any(masks.get(k, False)) for k in TUMOUR_KEYS):
        raise NoTumourError("no voxel of GTVp or GTVn is set; there is no tumour to measure")
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    values: dict[str, float] = {}
    for key in TUMOUR_KEYS:
        mask = np.asarray(masks.get(key, np.zeros(image.array.shape, bool)), dtype=bool)
        if mask.shape != image.array.shape:
            raise InputImageError(f"the {key} mask {mask.shape} does not match the image {image.array.shape}")
        values[f"{key}_volume_ml"] = float(mask.sum()) * voxel_ml
    gtvp = np.asarray(masks.get("gtvp", np.zeros(image.array.shape, bool)), dtype=bool)
    values["gtvp_mean_intensity"] = float(image.array[gtvp].mean()) if gtvp.any() else float("nan")
    return values


def measurements_vector(values: Mapping[str, float]) -> np.ndarray:
    """The measurements in ``MEASUREMENT_NAMES`` order (NaN where not measurable, imputed by the model)."""
    return np.array([np.log1p(values["gtvp_volume_ml"]), np.log1p(values["gtvn_volume_ml"]),
                     values["gtvp_mean_intensity"]], dtype=np.float64)


def pooled_network_features(bundle, image: VolumeImage, masks: Mapping[str, np.ndarray], margin_mm: float = 10.0,
                            modality: str = "CT") -> np.ndarray:
    """Bottleneck features averaged inside GTVp and inside GTVn: ``[2 * C]`` (zeros for an absent tumour).

    ``bundle`` is a segmentation :class:`~DuPLUSLib.bundle.ModelBundle`. One forward pass over a box
    around all tumour voxels (plus ``margin_mm``), padded to the network's size multiple.
    """
    import torch
    import torch.nn.functional as F

    from ..preprocessing import normalise_intensity, resample_onto, resample_to_spacing

    settings = bundle.config.inference
    network = bundle.network.eval()
    union = np.zeros(image.array.shape, bool)
    for key in TUMOUR_KEYS:
        if key in masks:
            union |= np.asarray(masks[key], bool)
    if not union.any():
        raise NoTumourError("no voxel of GTVp or GTVn is set; there is no tumour to pool features in")
    cropped, cropped_masks = _crop_around(image, masks, union, margin_mm)
    model_image = resample_to_spacing(cropped, settings.spacing)
    array = normalise_intensity(model_image.array, settings.normalisation[modality])
    multiple = network.config.size_multiple
    pads = [(-s) % multiple for s in array.shape]
    tensor = torch.as_tensor(np.pad(array, [(0, p) for p in pads], mode="edge"))[None, None]
    context = bundle.embeddings.get([bundle.ontology.context_text(modality, "head_neck")])[0]
    with torch.no_grad():
        bottleneck = network.forward_features(tensor, modality, context).bottleneck[0]  # [C, k', j', i']
    pooled = []
    for key in TUMOUR_KEYS:
        mask = cropped_masks.get(key)
        if mask is None or not mask.any():
            pooled.append(torch.zeros(bottleneck.shape[0]))
            continue
        on_grid = resample_onto(cropped.with_array(mask.astype(np.float32)), model_image, "linear", 0.0)
        padded = torch.as_tensor(np.pad(on_grid, [(0, p) for p in pads]))[None, None]
        weights = F.adaptive_avg_pool3d(padded, bottleneck.shape[1:])[0, 0]  # voxel share of each cell
        pooled.append((bottleneck * weights).sum((1, 2, 3)) / weights.sum().clamp_min(1e-6))
    return torch.cat(pooled).double().numpy()


def _crop_around(image: VolumeImage, masks: Mapping[str, np.ndarray], union: np.ndarray, margin_mm: float):
    from dataclasses import replace

    margin = [int(np.ceil(margin_mm / s)) for s in image.spacing[::-1]]  # [k, j, i]
    where = np.argwhere(union)
    low = np.maximum(where.min(0) - margin, 0)
    high = np.minimum(where.max(0) + margin + 1, image.array.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    origin = image.ijk_to_lps @ np.array([low[2], low[1], low[0], 1.0])
    cropped = replace(image, array=image.array[box], origin=tuple(origin[:3]))
    return cropped, {k: np.asarray(m, bool)[box] for k, m in masks.items()}
