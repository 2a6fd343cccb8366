"""The CT body region: hand-made CTs for the region itself, and a model whose settings cut its CT
predictions to it, end to end through a saved bundle."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine_fixtures import bright_region_network, bundle_of, one_thread  # noqa: F401
from DuPLUSLib.body_region import convex_hull_2d, ct_body_region
from DuPLUSLib.bundle import load_bundle
from DuPLUSLib.errors import ModelBundleError
from DuPLUSLib.imageio import VolumeImage
from DuPLUSLib.inference import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

AIR, TISSUE = -1000.0, 40.0


def chest(shape=(8, 48, 48), radius=18.0, wall=3.0) -> np.ndarray:
    """A cylinder of tissue whose inside is air: a chest wall around two 'lungs' of air, in air."""
    k, j, i = np.indices(shape)
    distance = np.hypot(j - shape[1] / 2, i - shape[2] / 2)
    hu = np.full(shape, AIR)
    hu[(distance <= radius) & (distance > radius - wall)] = TISSUE
    mediastinum = (distance <= radius) & (np.abs(i - shape[2] / 2) <= 1)  # parts the two lungs
    hu[mediastinum] = TISSUE
    return hu


def test_the_air_inside_the_chest_wall_is_body_and_the_air_around_it_is_not():
    hu = chest()
    region = ct_body_region(hu)
    assert region[:, 24, 14].all() and region[:, 24, 34].all()  # both lungs
    assert not region[:, 2, 2].any() and not region[:, 45, 24].any()  # the corners and the air in front


def test_a_scan_cropped_through_the_body_keeps_the_air_that_touches_the_crop():
    """Cropped through both lungs: a filled outline would lose them, the hull keeps them."""
    hu = chest()[:, 6:42, 10:38]  # the chest wall's left and right sides are cut away
    region = ct_body_region(hu)
    assert region[:, 18, 0].all() and region[:, 18, -1].all()


def test_noise_in_the_air_is_not_body_and_a_slice_without_body_has_no_region():
    hu = chest()
    hu[:, 1, 1] = TISSUE  # a streak outside the patient, far smaller than the body
    hu[0] = AIR
    region = ct_body_region(hu)
    assert not region[1:, 1, 1].any()
    assert not region[0].any()


def test_the_region_reaches_one_voxel_beyond_the_outermost_tissue():
    """The skin's voxels blend tissue with air; a structure's label can reach them."""
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    hull = convex_hull_2d(mask, margin=1.0)
    assert hull[4:16, 4:16].all() and not hull[3, 10] and not hull[10, 16]
    assert np.array_equal(convex_hull_2d(mask), mask)


def body_and_marker(shape_ijk=(40, 40, 16)) -> tuple[VolumeImage, np.ndarray, np.ndarray]:
    """A CT at 2 mm: a tissue cylinder with a bright insert, and a bright marker in the air beside it."""
    i, j = np.meshgrid(np.arange(shape_ijk[0]), np.arange(shape_ijk[1]), indexing="xy")
    hu = np.full(shape_ijk[::-1], AIR, np.float32)
    hu[:, np.hypot(i - 16, j - 20) <= 12] = TISSUE
    insert = np.zeros(hu.shape, bool)
    insert[4:12, 17:23, 13:19] = True
    marker = np.zeros(hu.shape, bool)
    marker[6:10, 18:22, 33:37] = True  # outside the cylinder (which reaches i = 28)
    hu[insert | marker] = 1000.0
    return VolumeImage(hu, spacing=(2.0, 2.0, 2.0)), insert, marker


def test_a_model_cuts_its_ct_predictions_to_the_body_and_says_how_much(tmp_path):
    """The hand-set network marks every bright voxel; with the body constraint the marker outside
    the patient is gone and reported, the insert inside is untouched."""
    bundle = bundle_of(bright_region_network(), spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32),
                       weights_dtype="float32")
    image, insert, marker = body_and_marker()
    prompts = ["CT/abdomen/liver"]
    plain = Segmenter(bundle, device="cpu")
    found = plain.segment(image, plain.parse_prompts(prompts))
    assert found.segments[0].mask[marker].all() and found.report()["segments"][0]["outside_body_ml"] is None

    bundle.config.inference = dataclasses.replace(bundle.config.inference, body_constraint=("CT",))
    folder = bundle.save(tmp_path / "model")
    segmenter = Segmenter(load_bundle(folder), device="cpu")
    result = segmenter.segment(image, segmenter.parse_prompts(prompts))
    mask = result.segments[0].mask
    assert not mask[marker].any()
    assert np.array_equal(mask & ~marker, found.segments[0].mask & ~marker)
    entry = result.report()["segments"][0]
    assert entry["outside_body_ml"] == pytest.approx(marker.sum() * 8 / 1000, rel=0.3)

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["inference"]["body_constraint"] = ["MRI"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelBundleError, match="body_constraint must be a list of modalities among"):
        load_bundle(folder)
