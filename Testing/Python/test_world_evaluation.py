"""Real-scan scoring compares masks in world coordinates: a reference stored with its rows in the
opposite order, or on a cropped grid, scores the same as one on the image's own grid."""

from __future__ import annotations

import json

import numpy as np

from DuPLUSLib.imageio import VolumeImage, write_image
from DuPLUSLib.training.world_evaluation import dice, evaluate_world_cases, grid_ceiling, mask_onto


def box_image(flip_rows: bool = False) -> VolumeImage:
    array = np.zeros((10, 12, 14), np.uint8)
    array[3:7, 2:6, 4:10] = 1
    direction = np.eye(3)
    origin = (0.0, 0.0, 0.0)
    if flip_rows:  # the same voxels, stored with j running the other way
        array = array[:, ::-1, :].copy()
        direction = np.diag([1.0, -1.0, 1.0])
        origin = (0.0, 11 * 2.0, 0.0)
    return VolumeImage(array, (1.5, 2.0, 3.0), origin, direction)


def test_a_mask_stored_with_opposite_rows_lands_on_the_same_world_voxels():
    plain, flipped = box_image(), box_image(flip_rows=True)
    assert not np.array_equal(plain.array, flipped.array)  # voxel by voxel they disagree
    assert dice(mask_onto(flipped, plain), plain.array > 0) == 1.0


def test_cases_are_scored_against_references_on_their_own_grids(tmp_path):
    image = box_image().with_array(np.where(box_image().array > 0, 100.0, -1000.0).astype(np.float32))
    write_image(image, tmp_path / "image.nrrd")
    write_image(box_image(flip_rows=True), tmp_path / "liver.nrrd")
    cropped = box_image()
    write_image(VolumeImage(cropped.array[2:8], cropped.spacing, (0.0, 0.0, 6.0)), tmp_path / "spleen.nrrd")
    (tmp_path / "cases.json").write_text(json.dumps({"cases": [
        {"name": "toy", "image": "image.nrrd", "contexts": {"CT/abdomen": {"liver": "liver.nrrd", "spleen": "spleen.nrrd"}}}]}))

    def threshold(image: VolumeImage, context: str, structures: list[str]) -> dict[str, VolumeImage]:
        assert context == "CT/abdomen"
        return {key: image.with_array(image.array > 0) for key in structures}

    records = evaluate_world_cases(threshold, tmp_path / "cases.json")
    assert [(r["structure"], r["dice"]) for r in records] == [("liver", 1.0), ("spleen", 1.0)]

    def shifted(image: VolumeImage, context: str, structures: list[str]) -> dict[str, VolumeImage]:
        return {key: image.with_array(np.roll(image.array > 0, 2, axis=2)) for key in structures}

    assert all(r["dice"] < 1.0 for r in evaluate_world_cases(shifted, tmp_path / "cases.json"))


def test_the_ceiling_of_a_grid_is_perfect_at_the_scans_own_spacing_and_lower_on_a_coarser_one():
    reference = VolumeImage(np.zeros((30, 30, 30), np.uint8), (2.0, 2.0, 2.0))
    reference.array[10:17, 9:20, 11:16] = 1
    assert grid_ceiling(reference, (2.0, 2.0, 2.0)) == 1.0
    assert 0.5 < grid_ceiling(reference, (5.0, 5.0, 5.0)) < 1.0
