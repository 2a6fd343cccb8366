"""Real images, real geometry and small real model bundles for the engine's tests.

Nothing here is a mock: the volumes are written and read with SimpleITK, the networks are
``DuPLUSNet``s (small ones, with random or hand-set weights) saved as real model folders with
``ModelBundle.save``, exactly as training writes them.

Import what a test needs explicitly::

    from engine_fixtures import oblique_direction, sphere_volume, save_random_bundle

Two hand-made models are offered:

* :func:`save_random_bundle`: random weights; its masks mean nothing but are deterministic, so it
  tests the mechanics (one pass vs one at a time, cancelling, files, progress).
* :func:`save_bright_region_bundle`: weights set by hand so the network marks the voxels much
  brighter than the rest of the volume, whatever the prompt. A bright sphere placed at a known
  point in patient space must come back as a mask at that point on the input grid, which checks
  resampling to the model grid and back through a non-identity direction.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DuPLUSLib.bundle import BundleConfig, InferenceSettings, ModelBundle
from DuPLUSLib.imageio import VolumeImage, to_sitk
from DuPLUSLib.network import DuPLUSNet, NetworkConfig
from DuPLUSLib.ontology import Ontology, load_ontology
from DuPLUSLib.text import PromptEmbeddings

TEXT_DIM = 16


# --------------------------------------------------------------------------------- pytest fixtures
@pytest.fixture
def one_thread():
    """The machine is shared: run torch on one thread for the test's duration."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------- geometry
def rotation_about(axis: str, degrees: float) -> np.ndarray:
    """A right-handed rotation matrix about the x, y or z axis."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    matrices = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    return np.array(matrices[axis], dtype=float)


def oblique_direction() -> np.ndarray:
    """Rotated 30 degrees about the z axis, with the j axis flipped: neither identity nor a permutation."""
    return rotation_about("z", 30.0) @ np.diag([1.0, -1.0, 1.0])


ANISOTROPIC_SPACING = (0.8, 1.1, 2.5)
OBLIQUE_ORIGIN = (-12.5, 30.25, -7.0)


def sphere_volume(
    shape_ijk: tuple[int, int, int] = (24, 20, 12),
    spacing: tuple[float, float, float] = ANISOTROPIC_SPACING,
    direction: np.ndarray | None = None,
    origin: tuple[float, float, float] = OBLIQUE_ORIGIN,
    centre_ijk: tuple[float, float, float] | None = None,
    radius_mm: float = 6.0,
    background: float = -100.0,
    foreground: float = 300.0,
    noise: float = 5.0,
    seed: int = 0,
    dtype: type = np.int16,
) -> tuple[VolumeImage, np.ndarray]:
    """A CT-like volume with one bright sphere; returns the image and the sphere's true mask [k, j, i].

    The sphere is defined in patient millimetres, so its mask is right whatever the direction.
    """
    direction = oblique_direction() if direction is None else direction
    geometry = VolumeImage(
        array=np.zeros(shape_ijk[::-1], dtype=dtype), spacing=spacing, origin=origin, direction=direction
    )
    centre_ijk = tuple((s - 1) / 2 for s in shape_ijk) if centre_ijk is None else centre_ijk
    centre_lps = (geometry.ijk_to_lps @ np.array([*centre_ijk, 1.0]))[:3]
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_ijk[::-1]), indexing="ij")
    voxels = np.stack([i, j, k, np.ones_like(i)], axis=-1).reshape(-1, 4).astype(float)
    lps = (geometry.ijk_to_lps @ voxels.T).T[:, :3]
    inside = (np.linalg.norm(lps - centre_lps, axis=1) <= radius_mm).reshape(shape_ijk[::-1])
    rng = np.random.default_rng(seed)
    array = np.where(inside, foreground, background) + rng.normal(0, noise, inside.shape)
    return geometry.with_array(array.astype(dtype)), inside


# ----------------------------------------------------------------------------------- DICOM
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"


def write_dicom_series(image: VolumeImage, folder: Path, series_uid: str, modality: str = "CT") -> None:
    """One file per slice with the tags a scanner writes, so GDCM rebuilds the volume from them."""
    volume = to_sitk(image)
    direction = volume.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        slice_ = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": STUDY_UID,
            "0020|000e": series_uid,
            "0020|0052": f"{STUDY_UID}.1",  # FrameOfReferenceUID: a DICOM SEG needs it
            "0010|0010": "Phantom^Test",
            "0010|0020": "PHANTOM-1",
            "0020|0011": "3",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{c:.10g}" for c in position),
            "0020|0037": "\\".join(f"{c:.10g}" for c in (direction[0], direction[3], direction[6],
                                                         direction[1], direction[4], direction[7])),
            "0028|0030": f"{volume.GetSpacing()[1]:.10g}\\{volume.GetSpacing()[0]:.10g}",
            "0018|0050": f"{volume.GetSpacing()[2]:.10g}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_)


def right_handed_oblique_direction() -> np.ndarray:
    """DICOM stores k as the normal of the slice plane, so its volumes are right-handed:
    rotated 30 degrees about z, with the j and k axes flipped."""
    return rotation_about("z", 30.0) @ np.diag([1.0, -1.0, -1.0])


# ----------------------------------------------------------------------------------- scoring
def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


# ------------------------------------------------------------------------------------- bundles
def small_network_config(conditioning: str = "film", text_dim: int = TEXT_DIM) -> NetworkConfig:
    """Two stages, a handful of channels: milliseconds per window on one CPU thread."""
    return NetworkConfig(
        channels=(4, 8),
        encoder_blocks=1,
        decoder_blocks=1,
        conditioned_decoder_stages=1,
        conditioning=conditioning,
        text_dim=text_dim,
        head_embed=8,
        head_channels=4,
        condition_hidden=8,
    )


def random_prompt_embeddings(ontology: Ontology | None = None, dim: int = TEXT_DIM, seed: int = 0) -> PromptEmbeddings:
    """A unit vector per ontology sentence, random but fixed by ``seed``; no language model needed."""
    ontology = ontology or load_ontology()
    texts = ontology.all_texts()
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(len(texts), dim, generator=generator), dim=-1)
    return PromptEmbeddings(texts, vectors)


def randomise_context_generators(network: DuPLUSNet, seed: int = 0, scale: float = 0.5) -> None:
    """Give the (zero-initialised) FiLM/gate generators random last layers, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "conditioning.generator.2" in name:
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


def random_network(
    conditioning: str = "film", seed: int = 0, text_dim: int = TEXT_DIM, logit_scale: float = 1.0
) -> DuPLUSNet:
    """A small random network; ``logit_scale`` multiplies the last dynamic convolution, so that a
    random model gives confident (far from 0.5) probabilities as a trained one does."""
    torch.manual_seed(seed)
    network = DuPLUSNet(small_network_config(conditioning, text_dim))
    if conditioning != "none":
        randomise_context_generators(network, seed)
    if logit_scale != 1.0:
        head = network.head
        last = sum(o * i + o for o, i in head.param_shapes[:-1])
        with torch.no_grad():
            head.controller.weight[last:] *= logit_scale
            head.controller.bias[last:] *= logit_scale
    return network.eval()


def bundle_of(
    network: DuPLUSNet,
    embeddings: PromptEmbeddings | None = None,
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    patch_size: tuple[int, int, int] = (16, 16, 16),
    name: str = "test-model",
    weights_dtype: str = "float16",
    threshold: float = 0.5,
) -> ModelBundle:
    """An in-memory bundle around ``network``, the way training assembles one before saving it."""
    ontology = load_ontology()
    config = BundleConfig(
        name=name,
        network=network.config,
        inference=InferenceSettings(spacing=spacing, patch_size=patch_size, overlap=0.25, window_batch=2,
                                    threshold=threshold),
        ontology_version=ontology.version,
        text_encoder={"id": "random-test-vectors", "path": None},
        weights_dtype=weights_dtype,
        description="random weights, for tests only",
    )
    embeddings = embeddings or random_prompt_embeddings(ontology, network.config.text_dim)
    return ModelBundle(None, config, network, embeddings, ontology)


def save_random_bundle(
    folder: str | Path, conditioning: str = "film", seed: int = 0, logit_scale: float = 100.0, **settings
) -> Path:
    """A model folder with a small random network; returns the folder."""
    network = random_network(conditioning, seed, logit_scale=logit_scale)
    return bundle_of(network, **settings).save(folder, card="# test model\n")


def bright_region_network(threshold_z: float = 1.0, sharpness: float = 20.0) -> DuPLUSNet:
    """A DuPLUSNet whose weights are set by hand to mark voxels brighter than ``threshold_z``
    standard deviations above the window's mean, for every prompt.

    Every residual branch is zeroed, so each block passes its input on; the CT stem copies the
    intensity into channel 0; the decoder's 1x1 skip keeps it; the head's GroupNorm turns it into a
    z-score over the window and the controller's bias (its weights are zero) sets fixed dynamic
    convolutions that compare that z-score with ``threshold_z``.
    """
    network = random_network("film")
    network.config.head_normalisation = False  # the hand-set head below is a plain threshold
    network.head.normalise = False
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        for name, module in network.named_modules():
            if isinstance(module, (torch.nn.InstanceNorm3d, torch.nn.GroupNorm)) and module.weight is not None:
                module.weight.fill_(1.0)
        for stem in network.stems.values():
            stem.weight[0, 0, 1, 1, 1] = 1.0
        c0 = network.config.channels[0]
        for stage in network.decoder:
            first = stage.blocks[0]
            first.skip.weight[0, c0, 0, 0, 0] = 1.0  # the encoder skip's channel 0 comes after the upsampled half
        head = network.head
        head.feature_reduction[-1].weight[0, 0, 0, 0, 0] = 1.0
        bias = torch.zeros(head.controller.out_features)
        offset = 0
        for index, (outputs, inputs) in enumerate(head.param_shapes):
            weight = torch.zeros(outputs, inputs)
            layer_bias = torch.zeros(outputs)
            if index < len(head.param_shapes) - 1:
                weight[0, 0] = 1.0
            else:
                weight[0, 0] = sharpness
                layer_bias[0] = -sharpness * threshold_z
            bias[offset : offset + outputs * inputs] = weight.flatten()
            offset += outputs * inputs
            bias[offset : offset + outputs] = layer_bias
            offset += outputs
        assert offset == head.controller.out_features
        head.controller.bias.copy_(bias)
    return network.eval()


def save_bright_region_bundle(folder: str | Path, patch_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0)) -> Path:
    """A model folder whose network marks the bright region; one window should cover the volume."""
    return bundle_of(bright_region_network(), spacing=spacing, patch_size=patch_size,
                     weights_dtype="float32", name="bright-region").save(folder)
