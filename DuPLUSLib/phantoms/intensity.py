"""How each modality turns painted tissue into an image, and how a "new centre" shifts it.

An :class:`ImagingModel` says, per tissue, which channel values the renderer blends (CT: HU and
texture; MRI: signal; PET: SUV; ultrasound: echogenicity, attenuation, reflectivity) and then
finishes the image the way that scanner does: CT adds quantum noise, MRI a multiplicative bias field
and Rician noise, PET a Gaussian point-spread function and count noise, ultrasound speckle,
shadowing and a fan-shaped field of view (:mod:`.ultrasound`). Per case the tissue values are
jittered and a protocol is drawn (contrast phase, T1 or T2 weighting), so the model meets the
variety it will meet in real scans.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from .geometry import Acquisition
from .render import Canvas
from .tissues import TISSUES, TissueProperties

__all__ = ["DomainShift", "NEW_CENTRE", "ImagingModel", "make_imaging_model", "texture_field"]


@dataclass(frozen=True)
class DomainShift:
    """A systematic difference between acquisition sites, applied on top of the per-case variety.

    ``intensity_scale`` and ``intensity_offset`` act on the finished image in the modality's units
    (HU, SUV, ...): ``image * scale + offset``; ``noise`` multiplies the noise level; ``spacing_factor``
    multiplies the voxel spacing (a coarser or finer scanner); ``blur_mm`` adds a Gaussian blur of that
    FWHM (a softer reconstruction kernel); ``bias`` multiplies the MRI bias-field strength.
    """

    intensity_scale: float = 1.0
    intensity_offset: float = 0.0
    noise: float = 1.0
    spacing_factor: float = 1.0
    blur_mm: float = 0.0
    bias: float = 1.0

    @classmethod
    def coerce(cls, value: "DomainShift | Mapping[str, Any] | None") -> "DomainShift":
        """Accept a DomainShift, a dict of its fields (unknown names are an error) or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        names = {f.name for f in fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"unknown domain-shift parameter(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{k: float(v) for k, v in value.items()})


#: A ready-made "new centre": brighter, noisier, coarser scans, for domain-shift and LoRA experiments.
NEW_CENTRE = DomainShift(intensity_scale=1.15, intensity_offset=40.0, noise=2.0, spacing_factor=1.3)


def texture_field(rng: np.random.Generator, shape_kji, spacing, grain_mm: float = 8.0) -> np.ndarray:
    """Smooth unit-variance noise with a grain of about ``grain_mm``, for tissue heterogeneity.

    White noise on a grid one grain coarse, spread to the voxels by a Gaussian weight matrix per
    axis: three small matrix products, far cheaper than filtering the full volume, and blotchy
    like real parenchyma rather than striped.
    """
    nk, nj, ni = shape_kji
    coarse = [max(2, int(np.ceil(n * s / grain_mm)) + 2) for n, s in zip(shape_kji, spacing[::-1])]
    field = rng.standard_normal(coarse).astype(np.float32)
    wk, wj, wi = (_spreading_weights(n, s, c, grain_mm) for n, s, c in zip(shape_kji, spacing[::-1], coarse))
    field = field @ wi.T  # (ck, cj, ni)
    field = wj @ field  # (ck, nj, ni)
    return (wk @ field.reshape(coarse[0], nj * ni)).reshape(nk, nj, ni)


def _spreading_weights(n: int, spacing: float, nodes: int, grain_mm: float) -> np.ndarray:
    positions = np.arange(n) * spacing
    centres = (np.arange(nodes) - 1) * grain_mm
    weights = np.exp(-0.5 * ((positions[:, None] - centres[None, :]) / (0.6 * grain_mm)) ** 2)
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))  # unit variance at every voxel
    return weights.astype(np.float32)


class ImagingModel:
    """Per-modality appearance. Subclasses set ``background`` and implement ``values``/``finish``."""

    modality: str = ""
    protocol: str = ""

    def __init__(self, rng: np.random.Generator, region: str, shift: DomainShift):
        self.rng = rng
        self.region = region
        self.shift = shift
        self._jitter: dict[str, float] = {}

    def _jittered(self, tissue: str, spread: float) -> float:
        """A per-case factor for a tissue, drawn once so repeated layers of it match."""
        if tissue not in self._jitter:
            self._jitter[tissue] = float(self.rng.uniform(1 - spread, 1 + spread))
        return self._jitter[tissue]

    @property
    def background(self) -> np.ndarray:
        return self.values("air")

    def values(self, tissue: str) -> np.ndarray:
        raise NotImplementedError

    def finish(self, canvas: Canvas, acquisition: Acquisition) -> np.ndarray:
        raise NotImplementedError

    def _shift_and_blur(self, image: np.ndarray, acquisition: Acquisition) -> np.ndarray:
        if self.shift.blur_mm > 0:
            sigma = [self.shift.blur_mm / 2.355 / s for s in acquisition.spacing[::-1]]
            image = ndimage.gaussian_filter(image, sigma)
        if self.shift.intensity_scale != 1.0 or self.shift.intensity_offset != 0.0:
            image = image * np.float32(self.shift.intensity_scale) + np.float32(self.shift.intensity_offset)
        return image


class CTModel(ImagingModel):
    """Hounsfield units; contrast-enhanced (portal venous) in most cases; Gaussian quantum noise."""

    modality = "CT"

    #: Late-arterial phase: bright arteries and renal cortex, liver barely enhanced yet.
    _ARTERIAL = {"blood": 280.0, "kidney_cortex": 200.0, "kidney_medulla": 70.0, "liver": 75.0, "spleen": 105.0,
                 "pancreas": 120.0, "myocardium": 130.0, "tumour": 95.0, "kidney_tumour": 150.0, "liver_tumour": 100.0}

    def __init__(self, rng, region, shift):
        super().__init__(rng, region, shift)
        self.contrast = bool(rng.random() < (0.3 if region == "brain" else 0.65))
        self.arterial = self.contrast and region in ("thorax", "abdomen") and bool(rng.random() < 0.3)
        self.protocol = "arterial phase" if self.arterial else "contrast-enhanced" if self.contrast else "non-contrast"
        # Head protocols use more dose and softer kernels: brain noise is a few HU, body noise more.
        low, high = (3.0, 8.0) if region in ("brain", "head_neck") else (6.0, 18.0)
        self.noise_hu = float(rng.uniform(low, high)) * shift.noise

    def values(self, tissue):
        p: TissueProperties = TISSUES[tissue]
        hu = p.ct_contrast if self.contrast else p.ct_plain
        if self.arterial:
            hu = self._ARTERIAL.get(tissue, hu)
        if -500 < hu < 300:  # soft tissue varies a little between patients; air and bone hardly
            hu = hu + 40.0 * (self._jittered(tissue, 0.15) - 1.0)
        texture = p.texture * max(20.0, 0.1 * abs(hu))
        return np.array([hu, texture], dtype=np.float32)

    def finish(self, canvas, acquisition):
        image = canvas.channels[0] + canvas.channels[1] * texture_field(self.rng, acquisition.shape_kji, acquisition.spacing)
        image += self.rng.standard_normal(image.shape, dtype=np.float32) * np.float32(self.noise_hu)
        image = self._shift_and_blur(image, acquisition)
        return np.clip(np.round(image), -1024, 3071).astype(np.int16)


class MRIModel(ImagingModel):
    """Arbitrary units; T1-, T2-weighted or FLAIR (cine bSSFP for the heart); bias field; Rician noise."""

    modality = "MRI"
    _PROTOCOLS = {
        "brain": ("t1", "t2", "flair"),
        "head_neck": ("t1", "t2"),
        "thorax": ("bssfp",),
        "abdomen": ("t1", "t2"),
        "pelvis": ("t2", "t2", "t1"),
    }

    def __init__(self, rng, region, shift):
        super().__init__(rng, region, shift)
        choices = self._PROTOCOLS.get(region, ("t1", "t2"))
        self.protocol = choices[int(rng.integers(len(choices)))]
        self.gain = float(rng.uniform(0.5, 2.0))  # scanners scale their output arbitrarily
        self.noise = float(rng.uniform(0.008, 0.03)) * 1000 * shift.noise
        self.bias_strength = float(rng.uniform(0.1, 0.3)) * shift.bias

    #: FLAIR is T2 weighting with free water nulled: dark CSF, bright oedema and tumour.
    _FLAIR = {"csf": 60.0, "urine": 60.0, "bile": 60.0, "eye": 60.0, "gastric_fluid": 80.0,
              "edema": 950.0, "brain_tumour": 800.0, "necrosis": 300.0}

    def values(self, tissue):
        p = TISSUES[tissue]
        if self.protocol == "flair":
            base = self._FLAIR.get(tissue, p.t2)
        else:
            base = getattr(p, self.protocol)
        signal = base * self._jittered(tissue, 0.12)
        return np.array([signal, signal * p.texture * 0.15], dtype=np.float32)

    def finish(self, canvas, acquisition):
        image = canvas.channels[0] + canvas.channels[1] * texture_field(self.rng, acquisition.shape_kji, acquisition.spacing)
        image *= smooth_bias_field(self.rng, acquisition.shape_kji, self.bias_strength)
        real = image + self.rng.standard_normal(image.shape, dtype=np.float32) * np.float32(self.noise)
        imaginary = self.rng.standard_normal(image.shape, dtype=np.float32) * np.float32(self.noise)
        image = np.sqrt(real * real + imaginary * imaginary) * np.float32(self.gain)
        return self._shift_and_blur(image, acquisition).astype(np.float32)


def smooth_bias_field(rng: np.random.Generator, shape_kji, strength: float) -> np.ndarray:
    """A multiplicative field ``exp(a(i) + b(j) + c(k) + ...)`` of quadratic trends, ~``strength`` peak.

    A sum of per-axis terms is separable, so it costs three short vectors and one broadcast.
    """
    terms = []
    for axis, n in enumerate(shape_kji):
        t = np.linspace(-1, 1, n, dtype=np.float32)
        a, b = rng.normal(0, strength / 2, size=2)
        shape = [1, 1, 1]
        shape[axis] = n
        terms.append((np.float32(a) * t + np.float32(b) * (t * t - 0.33)).reshape(shape))
    return np.exp(terms[0] + terms[1] + terms[2]).astype(np.float32)


class PETModel(ImagingModel):
    """SUV; uptake varies a lot between patients (myocardium above all); PSF ~6 mm FWHM; count noise."""

    modality = "PET"
    protocol = "FDG"

    def __init__(self, rng, region, shift):
        super().__init__(rng, region, shift)
        self.fwhm_mm = float(rng.uniform(5.0, 7.0))
        self.noise = float(rng.uniform(0.25, 0.5)) * shift.noise

    def values(self, tissue):
        p = TISSUES[tissue]
        spread = {"myocardium": 0.75, "urine": 0.6, "tumour": 0.5, "liver_tumour": 0.5, "kidney_tumour": 0.5,
                  "brain_tumour": 0.4}.get(tissue, 0.2)
        suv = p.suv * self._jittered(tissue, spread)
        return np.array([suv, suv * p.texture * 0.3], dtype=np.float32)

    def finish(self, canvas, acquisition):
        activity = canvas.channels[0] + canvas.channels[1] * texture_field(self.rng, acquisition.shape_kji, acquisition.spacing)
        activity = np.maximum(activity, 0)
        counts_noise = self.rng.standard_normal(activity.shape, dtype=np.float32)
        activity += counts_noise * np.sqrt(activity + 0.05) * np.float32(self.noise)
        sigma = [self.fwhm_mm / 2.355 / s for s in acquisition.spacing[::-1]]
        image = ndimage.gaussian_filter(activity, sigma)
        image = self._shift_and_blur(np.maximum(image, 0), acquisition)
        return image.astype(np.float32)


def make_imaging_model(modality: str, region: str, rng: np.random.Generator, shift: DomainShift) -> ImagingModel:
    from .ultrasound import UltrasoundModel

    models = {"CT": CTModel, "MRI": MRIModel, "PET": PETModel, "US": UltrasoundModel}
    try:
        return models[modality](rng, region, shift)
    except KeyError:
        raise ValueError(f"no phantom imaging model for modality '{modality}'; choose one of: {', '.join(models)}") from None
