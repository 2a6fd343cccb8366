"""Painting a label map as one modality would show it, then degrading it as a scanner would.

Per label a mean and a spread are drawn, the label is filled with noise of that spread, and the
image then goes through the modality's acquisition: slice thickness and blur, a bias field, and
the modality's noise. Values come out in the modality's own units (Hounsfield units for CT, SUV
for PET, arbitrary units for MRI and ultrasound), so the model's usual normalisation applies.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .labelmap import SourceLabelMap

__all__ = ["paint", "MODALITIES", "CT_PHASES"]

MODALITIES = ("CT", "MRI", "PET", "US")

# MRI signal per family, 0-1, for a T1-like and a T2-like weighting (centre of the draw).
_T1 = {"air": 0.0, "lung": 0.03, "fat": 0.9, "fluid": 0.12, "soft": 0.45, "muscle": 0.35, "vessel": 0.25,
       "bone": 0.08, "marrow": 0.6, "brain_grey": 0.45, "brain_white": 0.7, "csf": 0.12}
_T2 = {"air": 0.0, "lung": 0.03, "fat": 0.65, "fluid": 0.95, "soft": 0.35, "muscle": 0.2, "vessel": 0.15,
       "bone": 0.05, "marrow": 0.45, "brain_grey": 0.55, "brain_white": 0.4, "csf": 0.95}
# FDG uptake (SUV) per family, and for the organs whose uptake is their own.
_SUV_FAMILY = {"air": 0.0, "lung": 0.4, "fat": 0.3, "fluid": 0.8, "soft": 1.0, "muscle": 0.8, "vessel": 1.6,
               "bone": 0.7, "marrow": 1.5, "brain_grey": 9.0, "brain_white": 4.0, "csf": 0.5}
_SUV_KEY = {"liver": 2.4, "spleen": 2.0, "kidney_left": 3.5, "kidney_right": 3.5, "bladder": 12.0,
            "heart": 3.0, "myocardium": 4.0, "stomach": 1.8, "colon": 1.6, "small_bowel": 1.5, "brain": 8.0,
            "pancreas": 1.4, "duodenum": 1.6}


# CT contrast phases drawn per case when ``contrast_phases`` is on, and how often. The real label
# maps synthesis starts from are plain CTs (TotalSegmentator's example: aorta 41 HU, liver 46 HU),
# so without this the synthesised CT never shows contrast, which most clinical CT carries.
CT_PHASES = ("native", "arterial", "portal")
_PHASE_PROBABILITIES = (0.3, 0.3, 0.4)
# Blood, absolute HU (low, high): arterial blood peaks in a CT angiogram, veins fill later.
_BLOOD_HU = {"native": ((30.0, 50.0), (30.0, 50.0)), "arterial": ((200.0, 500.0), (60.0, 150.0)),
             "portal": ((130.0, 200.0), (130.0, 190.0))}  # phase -> (arteries, veins)
# Enhancement added to a plain CT's parenchyma, HU (low, high), by structure and by family.
_ENHANCEMENT_HU = {
    "arterial": {"liver": (15, 35), "spleen": (50, 90), "kidney_left": (110, 170), "kidney_right": (110, 170),
                 "pancreas": (60, 90), "adrenal_left": (30, 60), "adrenal_right": (30, 60), "soft": (5, 25),
                 "muscle": (5, 15)},
    "portal": {"liver": (50, 70), "spleen": (60, 80), "kidney_left": (110, 160), "kidney_right": (110, 160),
               "pancreas": (40, 60), "adrenal_left": (30, 50), "adrenal_right": (30, 50), "soft": (10, 30),
               "muscle": (5, 20)},
}
# Structures filled with blood, arterial or venous; a label of the vessel family is a vein too. They are
# named here because a plain CT's unannotated vessels read as soft tissue by their HU.
_ARTERIAL_KEYS = frozenset({"aorta", "iliac_artery_left", "iliac_artery_right", "heart"})
_VENOUS_KEYS = frozenset({"inferior_vena_cava", "portal_splenic_vein", "iliac_vein_left", "iliac_vein_right"})


def paint(
    source: SourceLabelMap,
    labels: np.ndarray,
    spacing_kji: np.ndarray,
    modality: str,
    rng: np.random.Generator,
    *,
    contrast_phases: bool = False,
    label_contrast: np.random.Generator | None = None,
) -> np.ndarray:
    """An image of ``labels`` (values of ``source``) in ``modality``, float32 [k, j, i].

    ``contrast_phases`` (CT only) draws a native, arterial or portal-venous phase per case
    instead of only nudging the source's own enhancement. ``label_contrast`` (MRI only), a random
    stream, paints every label at its own intensity drawn from it (:func:`_mri`).
    """
    if modality == "CT":
        return _ct(source, labels, spacing_kji, rng, contrast_phases)
    if modality == "MRI":
        return _mri(source, labels, spacing_kji, rng, label_contrast)
    if modality == "PET":
        return _pet(source, labels, spacing_kji, rng)
    if modality == "US":
        return _ultrasound(source, labels, spacing_kji, rng)
    raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, not '{modality}'")


def _fill(labels: np.ndarray, means: dict[int, float], spreads: dict[int, float], rng: np.random.Generator) -> np.ndarray:
    """Each label's voxels drawn from its own Gaussian; the noise is smoothed a little so it reads as
    tissue texture rather than scanner noise (which comes later)."""
    lookup_mean = np.zeros(int(labels.max()) + 1, np.float32)
    lookup_spread = np.zeros_like(lookup_mean)
    for value, mean in means.items():
        lookup_mean[value] = mean
        lookup_spread[value] = spreads.get(value, 0.0)
    texture = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 0.7) * 2.0
    return lookup_mean[labels] + lookup_spread[labels] * texture


def _acquire(image: np.ndarray, spacing_kji: np.ndarray, rng: np.random.Generator, max_thickness_mm: float) -> np.ndarray:
    """Slice thickness along k and an in-plane point-spread function, as Gaussian blurs in voxels."""
    thickness = rng.uniform(spacing_kji[0], max_thickness_mm)
    in_plane = rng.uniform(0.5, 2.5)
    sigma_mm = np.array([thickness, in_plane, in_plane]) / 2.355
    return ndimage.gaussian_filter(image, sigma_mm / spacing_kji)


def _bias_field(shape, rng: np.random.Generator, strength: float) -> np.ndarray:
    coarse = rng.normal(0, strength, size=(4, 4, 4))
    field = ndimage.zoom(coarse, [s / 4 for s in shape], order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return np.exp(field).astype(np.float32)


def _ct(source: SourceLabelMap, labels, spacing, rng, contrast_phases: bool) -> np.ndarray:
    """Each label at its real median HU, moved by a per-case contrast shift (enhancing tissues more),
    or, with ``contrast_phases``, at its HU in a drawn phase (:func:`_phase_means`)."""
    if contrast_phases:
        means, spreads = _phase_means(source, rng)
    else:
        phase = rng.uniform(-0.4, 0.3)  # contrast timing: a fraction of each label's enhancement above 40 HU
        means, spreads = {}, {}
        for value in source.values:
            median, spread = source.ct_statistics.get(value, (0.0, 20.0))
            enhancement = max(median - 40.0, 0.0) if source.family[value] in ("vessel", "soft") else 0.0
            means[value] = median + phase * enhancement + rng.normal(0, 8 if source.family[value] != "air" else 0)
            spreads[value] = spread * rng.uniform(0.6, 1.2)
    image = _fill(labels, means, spreads, rng)
    image = _acquire(image, spacing, rng, max_thickness_mm=5.0)
    image += rng.normal(0, rng.uniform(5, 25), image.shape).astype(np.float32)
    return np.clip(image, -1024, 3071)


def _phase_means(source: SourceLabelMap, rng: np.random.Generator) -> tuple[dict[int, float], dict[int, float]]:
    """Per-label HU of a plain CT's labels in a drawn contrast phase: blood at the phase's absolute
    HU (whatever the source shows), enhancing parenchyma raised by its typical enhancement."""
    phase = str(rng.choice(CT_PHASES, p=_PHASE_PROBABILITIES))
    artery_hu, vein_hu = (rng.uniform(*bounds) for bounds in _BLOOD_HU[phase])
    enhancement = _ENHANCEMENT_HU.get(phase, {})
    means, spreads = {}, {}
    for value in source.values:
        median, spread = source.ct_statistics.get(value, (0.0, 20.0))
        family, key = source.family[value], source.anatomy_of(value) or ""
        if key in _ARTERIAL_KEYS:
            mean = artery_hu
        elif family == "vessel" or key in _VENOUS_KEYS:
            mean = vein_hu
        else:
            bounds = enhancement.get(key) or enhancement.get(family) or (0.0, 0.0)
            mean = median + rng.uniform(*bounds)
        means[value] = mean + rng.normal(0, 8 if family != "air" else 0)
        spreads[value] = spread * rng.uniform(0.6, 1.2)
    return means, spreads


def _mri(source: SourceLabelMap, labels, spacing, rng, label_contrast: np.random.Generator | None = None) -> np.ndarray:
    """T1-like, T2-like, or (one case in three) a random contrast per tissue family.

    Within a family every label stays near the family's value, so the liver and the spleen (both
    soft tissue) always look alike, whatever the weighting; real sequences separate them, each in
    its own way. With ``label_contrast`` every label instead gets its own uniform draw from that
    stream, as SynthSeg (Billot et al., 2023) paints its training images, so the model must find
    an organ by its shape and place rather than by an intensity relation no real sequence keeps.
    The other draws (spreads, blur, bias field, noise) are the case's own either way.
    """
    weighting = rng.choice(["t1", "t2", "random"], p=[0.35, 0.35, 0.3])
    table = _T1 if weighting == "t1" else _T2
    means, spreads = {}, {}
    family_means = {f: rng.uniform(0.0, 1.0) for f in table}
    for value in source.values:
        family = source.family[value]
        if family == "air":
            means[value] = 0.0
        elif weighting == "random":
            means[value] = float(np.clip(family_means[family] + rng.normal(0, 0.1), 0.0, 1.0))
        else:
            means[value] = float(np.clip(table[family] + rng.normal(0, 0.07), 0.0, 1.0))
        spreads[value] = rng.uniform(0.01, 0.06)
    if label_contrast is not None:
        means = {v: 0.0 if source.family[v] == "air" else float(label_contrast.uniform(0.0, 1.0)) for v in source.values}
    image = _fill(labels, means, spreads, rng)
    image = _acquire(image, spacing, rng, max_thickness_mm=7.0)
    image *= _bias_field(image.shape, rng, rng.uniform(0.05, 0.35))
    sigma = rng.uniform(0.005, 0.04)
    noisy = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))  # Rician
    return (noisy * 1000).astype(np.float32)


def _pet(source: SourceLabelMap, labels, spacing, rng) -> np.ndarray:
    means, spreads = {}, {}
    for value in source.values:
        key = source.key_of(value)
        base = _SUV_KEY.get(key or "", _SUV_FAMILY[source.family[value]])
        means[value] = base * rng.lognormal(0, 0.25) if base > 0 else 0.0
        spreads[value] = 0.1 * means[value]
    image = _fill(labels, means, spreads, rng)
    fwhm_mm = rng.uniform(4.0, 8.0)
    image = ndimage.gaussian_filter(image, fwhm_mm / 2.355 / spacing)
    counts = rng.uniform(20, 80)  # per SUV unit: Poisson-like noise that grows with uptake
    image = rng.poisson(np.clip(image, 0, None) * counts).astype(np.float32) / counts
    return ndimage.gaussian_filter(image, 0.6)


def _ultrasound(source: SourceLabelMap, labels, spacing, rng) -> np.ndarray:
    """Echogenicity per label, multiplicative speckle, depth attenuation and shadowing behind bone and gas."""
    means = {}
    for value in source.values:
        family = source.family[value]
        if family == "air":
            means[value] = 0.0
        elif family in ("fluid", "csf", "vessel"):
            means[value] = rng.uniform(0.02, 0.1)
        elif family in ("bone", "lung"):
            means[value] = rng.uniform(0.8, 1.0)
        else:
            means[value] = rng.uniform(0.2, 0.7)
    image = _fill(labels, means, {v: 0.0 for v in means}, rng)
    speckle = rng.rayleigh(1.0, image.shape).astype(np.float32)
    speckle = ndimage.gaussian_filter(speckle, [rng.uniform(0.5, 1.2), 0.6, 0.6])
    axis = int(rng.choice([1, 2]))  # the beam runs along a random in-plane axis
    depth = np.linspace(0, 1, image.shape[axis], dtype=np.float32)
    attenuation = np.exp(-rng.uniform(0.5, 2.0) * depth)
    blocking = np.isin(labels, [v for v in source.values if source.family[v] in ("bone", "lung")])
    shadow = np.cumsum(blocking, axis=axis) > 0
    view = [None, None, None]
    view[axis] = slice(None)
    image = image * speckle * attenuation[tuple(view)]
    image[shadow & ~blocking] *= 0.15
    return (np.clip(image, 0, None) * 255).astype(np.float32)
