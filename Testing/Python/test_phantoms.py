"""The phantom generator and the MNI152 case: determinism, anatomy, appearance, files.

Every case here uses a coarse 4 mm grid so the whole file runs in seconds.
"""

from __future__ import annotations

import argparse
import socket

import numpy as np
import pytest

from DuPLUSLib.imageio import read_image, read_segmentation
from DuPLUSLib.ontology import load_ontology
from DuPLUSLib.phantoms import DomainShift, Phantom, generate_phantom, mni152_case
from DuPLUSLib.phantoms.cli import register, run

FAST = 4.0  # mm


def centroid_lps(phantom: Phantom, mask: np.ndarray) -> np.ndarray:
    """A mask's centre in patient LPS millimetres, whatever the file's orientation."""
    kji = np.argwhere(mask).mean(axis=0)
    return phantom.image.ijk_to_lps[:3, :3] @ kji[::-1] + phantom.image.ijk_to_lps[:3, 3]


@pytest.fixture(scope="module")
def ct_abdomen() -> list[Phantom]:
    return [generate_phantom("CT", "abdomen", seed, spacing=FAST) for seed in range(6)]


def test_the_same_seed_gives_the_same_case():
    a = generate_phantom("CT", "abdomen", 7, spacing=FAST)
    b = generate_phantom("CT", "abdomen", 7, spacing=FAST)
    assert np.array_equal(a.image.array, b.image.array)
    assert all(np.array_equal(a.labels[k], b.labels[k]) for k in a.labels)
    assert np.allclose(a.image.direction, b.image.direction)


def test_different_seeds_give_different_cases():
    a = generate_phantom("CT", "abdomen", 1, spacing=FAST)
    b = generate_phantom("CT", "abdomen", 2, spacing=FAST)
    assert a.image.array.shape != b.image.array.shape or not np.array_equal(a.image.array, b.image.array)


# What the phantom generator draws; ontology 1.1 added structures only real data annotate.
PHANTOM_CT_ABDOMEN = ["liver", "liver_tumour", "spleen", "pancreas", "stomach", "gallbladder", "kidney_left",
                      "kidney_right", "kidney_tumour", "adrenal_left", "adrenal_right", "aorta",
                      "inferior_vena_cava", "oesophagus", "vertebrae", "spinal_cord"]


def test_ct_abdomen_has_every_structure_the_phantom_draws(ct_abdomen):
    wanted = PHANTOM_CT_ABDOMEN
    for phantom in ct_abdomen:
        assert list(phantom.labels) == wanted
        for key in wanted:
            assert phantom.labels[key].shape == phantom.image.array.shape
            if load_ontology().structures[key].kind != "tumour":
                assert phantom.labels[key].any(), f"{key} is empty in seed {phantom.seed}"


def test_ct_abdomen_labels_lie_in_the_body_and_in_soft_tissue(ct_abdomen):
    for phantom in ct_abdomen:
        for key, mask in phantom.labels.items():
            if not mask.any():
                continue
            assert (mask & phantom.body).sum() >= 0.95 * mask.sum(), key
            if key != "stomach":  # the stomach holds gas
                assert np.median(phantom.image.array[mask]) > -500, key


def test_ct_values_are_hounsfield_units(ct_abdomen):
    for phantom in ct_abdomen:
        image = phantom.image.array
        assert image.dtype == np.int16
        outside = ~phantom.body
        assert np.median(image[outside]) < -900  # air around the patient
        liver = np.median(image[phantom.labels["liver"]])
        assert 30 < liver < 150
        assert np.median(image[phantom.labels["vertebrae"]]) > 150


def test_organs_are_on_their_anatomical_sides(ct_abdomen):
    for phantom in ct_abdomen:
        body_x = centroid_lps(phantom, phantom.body)[0]
        x = {key: centroid_lps(phantom, phantom.labels[key])[0] - body_x for key in
             ("liver", "spleen", "kidney_left", "kidney_right", "aorta", "inferior_vena_cava")}
        assert x["liver"] < 0 < x["spleen"]  # LPS: +x is the patient's left
        assert x["kidney_right"] < 0 < x["kidney_left"]
        assert x["inferior_vena_cava"] < x["aorta"]
        vertebrae_y = centroid_lps(phantom, phantom.labels["vertebrae"])[1]
        for kidney in ("kidney_left", "kidney_right"):  # kidneys beside the spine, posterior
            assert centroid_lps(phantom, phantom.labels[kidney])[1] > vertebrae_y - 40
        assert centroid_lps(phantom, phantom.labels["aorta"])[1] < vertebrae_y  # in front of it


def test_tumours_lie_inside_their_organs(ct_abdomen):
    seen = 0
    for phantom in ct_abdomen:
        liver_tumour = phantom.labels["liver_tumour"]
        if liver_tumour.any():
            seen += 1
            assert (liver_tumour & phantom.labels["liver"]).sum() >= 0.9 * liver_tumour.sum()
        kidney_tumour = phantom.labels["kidney_tumour"]
        if kidney_tumour.any():
            kidneys = phantom.labels["kidney_left"] | phantom.labels["kidney_right"]
            assert (kidney_tumour & kidneys).sum() >= 0.9 * kidney_tumour.sum()
    assert 1 <= seen <= 6  # most cases, not necessarily all


def test_some_cases_are_stored_with_a_non_identity_direction(ct_abdomen):
    assert any(not np.allclose(p.image.direction, np.eye(3)) for p in ct_abdomen)


def test_a_domain_shift_changes_appearance_not_anatomy():
    plain = generate_phantom("CT", "abdomen", 3, spacing=FAST)
    shifted = generate_phantom("CT", "abdomen", 3, spacing=FAST,
                               shift=DomainShift(intensity_scale=1.15, intensity_offset=40, noise=2.0))
    assert all(np.array_equal(plain.labels[k], shifted.labels[k]) for k in plain.labels)
    liver = plain.labels["liver"]
    assert np.median(shifted.image.array[liver]) > np.median(plain.image.array[liver]) + 30
    coarser = generate_phantom("CT", "abdomen", 3, spacing=FAST, domain={"spacing_factor": 1.3})
    assert coarser.image.spacing[0] == pytest.approx(1.3 * FAST)


def test_a_written_case_reads_back_with_its_geometry(tmp_path, ct_abdomen):
    phantom = next(p for p in ct_abdomen if not np.allclose(p.image.direction, np.eye(3)))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["phantom", "--modality", "CT", "--region", "abdomen", "--seed", str(phantom.seed),
                              "-o", str(tmp_path / "case.nrrd"), "--label", str(tmp_path / "case.seg.nrrd"),
                              "--spacing", str(FAST)])
    assert run(args) == 0
    image = read_image(tmp_path / "case.nrrd")
    assert np.array_equal(image.array, phantom.image.array)
    assert np.allclose(image.direction, phantom.image.direction)
    geometry, masks = read_segmentation(tmp_path / "case.seg.nrrd", load_ontology())
    assert geometry.same_geometry(phantom.image)
    for key, mask in phantom.labels.items():
        assert np.array_equal(masks[key], mask), key


@pytest.mark.parametrize("extra, message", [
    (["--mni", "--spacing", "2", "2", "4"], "give --spacing one value"),
    (["--no-augment"], "--no-augment only applies with --mni"),
    (["--label", "{tmp}/old.seg.nrrd"], "old.seg.nrrd' already exists"),
])
def test_the_cli_refuses_before_writing_anything(tmp_path, extra, message, capsys):
    """Options it would ignore are refused, and a refused label leaves no new image behind."""
    from DuPLUSLib.cli import main

    (tmp_path / "old.seg.nrrd").write_text("a segmentation kept from before", encoding="utf-8")
    argv = ["phantom", "--seed", "1", "-o", str(tmp_path / "case.nrrd"), *[e.format(tmp=tmp_path) for e in extra]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.seg.nrrd"]


# ------------------------------------------------------------------------- every modality and region
CONTEXTS = load_ontology().contexts()


@pytest.mark.parametrize("modality,region", CONTEXTS, ids=[f"{m}-{r}" for m, r in CONTEXTS])
def test_every_context_generates_all_its_structures(modality, region):
    ontology = load_ontology()
    wanted = list(generate_phantom(modality, region, 0, spacing=FAST).labels)
    assert set(wanted) <= set(ontology.structures_of(modality, region)) and len(wanted) >= 2
    present = {key: 0 for key in wanted}
    for seed in (0, 1):
        phantom = generate_phantom(modality, region, seed, spacing=FAST)
        assert list(phantom.labels) == wanted
        assert phantom.image.array.shape == phantom.body.shape
        assert np.isfinite(phantom.image.array).all()
        for key, mask in phantom.labels.items():
            assert mask.dtype == bool and mask.shape == phantom.image.array.shape
            present[key] += int(mask.any())
            if mask.any():
                assert (mask & phantom.body).sum() >= 0.9 * mask.sum(), f"{key} lies outside the body"
        organs = [k for k in wanted if ontology.structures[k].kind != "tumour" and k != "brain"]
        for i, a in enumerate(organs):  # organs never share a voxel; only the brain contains others
            for b in organs[i + 1:]:
                assert not (phantom.labels[a] & phantom.labels[b]).any(), f"{a} and {b} overlap"
    for key, count in present.items():
        if ontology.structures[key].kind != "tumour":
            assert count == 2, f"{modality}/{region}: {key} is missing"


def test_structures_the_phantom_never_draws_are_left_unannotated_not_empty():
    phantom = generate_phantom("CT", "pelvis", 0, spacing=FAST)
    assert "bladder" in phantom.labels and "femoral_head_left" in phantom.labels
    for key in ("colon", "gluteus_maximus_left", "iliac_artery_left", "sacrum"):
        assert key in load_ontology().structures_of("CT", "pelvis")
        assert key not in phantom.labels


def test_head_and_neck_organs_are_on_their_sides():
    phantom = generate_phantom("CT", "head_neck", 4, spacing=FAST)
    centre = centroid_lps(phantom, phantom.body)
    for pair in ("parotid", "submandibular", "eye", "optic_nerve"):
        assert centroid_lps(phantom, phantom.labels[f"{pair}_left"])[0] > centre[0] > \
            centroid_lps(phantom, phantom.labels[f"{pair}_right"])[0], pair
    z = {key: centroid_lps(phantom, phantom.labels[key])[2] for key in ("eye_left", "parotid_left", "thyroid", "brainstem")}
    assert z["eye_left"] > z["parotid_left"] > z["thyroid"]
    assert z["brainstem"] > z["thyroid"]


def test_thorax_lungs_flank_the_heart_and_the_aorta_descends_left_of_the_spine():
    phantom = generate_phantom("CT", "thorax", 2, spacing=FAST)
    x = {key: centroid_lps(phantom, phantom.labels[key])[0] for key in ("lung_left", "lung_right", "heart")}
    assert x["lung_right"] < x["heart"] < x["lung_left"]
    assert x["heart"] > centroid_lps(phantom, phantom.body)[0]  # the heart leans left
    lungs = phantom.labels["lung_left"] | phantom.labels["lung_right"]
    assert np.median(phantom.image.array[lungs]) < -600


def test_mri_heart_has_a_myocardial_ring_round_the_left_ventricle():
    phantom = generate_phantom("MRI", "thorax", 3, spacing=(2.0, 2.0, 8.0))
    lv, myo, rv = (phantom.labels[k] for k in ("left_ventricle", "myocardium", "right_ventricle"))
    assert lv.any() and myo.any() and rv.any()
    assert not (lv & myo).any()
    assert np.median(phantom.image.array[lv]) > np.median(phantom.image.array[myo])  # bright blood in cine


def test_pelvis_femoral_heads_are_on_their_sides():
    phantom = generate_phantom("CT", "pelvis", 5, spacing=FAST)
    assert centroid_lps(phantom, phantom.labels["femoral_head_left"])[0] > \
        centroid_lps(phantom, phantom.labels["femoral_head_right"])[0]
    assert np.median(phantom.image.array[phantom.labels["femoral_head_left"]]) > 200


def test_ultrasound_is_zero_outside_its_fan_and_labels_stay_inside_it():
    for region in ("abdomen", "pelvis"):
        phantom = generate_phantom("US", region, 0, spacing=FAST)
        image = phantom.image.array
        fan = phantom.notes.get("field_of_view")
        assert fan is not None and 0.2 < fan.mean() < 0.9
        assert (image[~fan] == 0).all()
        assert image[fan].mean() > 10
        assert not np.allclose(phantom.image.direction, np.eye(3))  # the probe's own, oblique axes
        for mask in phantom.labels.values():
            assert not (mask & ~fan).any()


def test_pet_is_in_suv_with_hot_bladder_and_a_lesion_label_covering_the_gtvs():
    pelvis = generate_phantom("PET", "pelvis", 0, spacing=FAST)
    background = np.median(pelvis.image.array[pelvis.body])
    assert 0.1 < background < 1.5
    assert np.median(pelvis.image.array[pelvis.labels["bladder"]]) > 3 * background
    for seed in range(6):
        phantom = generate_phantom("PET", "head_neck", seed, spacing=FAST)
        gtvs = phantom.labels["gtvp"] | phantom.labels["gtvn"]
        assert not (gtvs & ~phantom.labels["lesion"]).any()


def test_mri_intensity_carries_a_bias_field_and_its_protocol():
    phantom = generate_phantom("MRI", "brain", 0, spacing=FAST)
    assert phantom.protocol in ("t1", "t2", "flair")
    assert phantom.image.metadata["DuPLUS.Protocol"] == phantom.protocol
    white = phantom.image.array[phantom.labels["white_matter"]]
    assert white.std() / white.mean() > 0.03  # bias and noise make tissue non-uniform


def test_an_unknown_region_is_refused_with_the_choices():
    from DuPLUSLib.errors import UnknownPromptError

    with pytest.raises(UnknownPromptError, match="abdomen"):
        generate_phantom("CT", "knee", 0)


def test_size_mm_sets_the_field_of_view():
    phantom = generate_phantom("CT", "pelvis", 0, spacing=FAST, size_mm=(200, 160, 120))
    extent = np.asarray(phantom.image.shape_ijk) * np.asarray(phantom.image.spacing)
    expected = np.abs(phantom.image.direction.T) @ np.array([200.0, 160.0, 120.0])  # patient x, y, z
    assert np.allclose(extent, expected, atol=FAST)


# ------------------------------------------------------------------------------------- MNI152
@pytest.fixture(scope="module")
def mni_plain() -> Phantom:
    return mni152_case(seed=None, resolution_mm=2)


def test_mni_loads_without_the_network(monkeypatch):
    from DuPLUSLib.phantoms import mni

    def refuse(*args, **kwargs):
        raise AssertionError("the MNI152 case tried to reach the network")

    mni.load_template.cache_clear()
    monkeypatch.setattr(socket.socket, "connect", refuse)
    case = mni152_case(seed=None, resolution_mm=4)
    assert case.labels["brain"].any()


def test_mni_grey_and_white_matter_are_disjoint_and_inside_the_brain(mni_plain):
    grey, white, brain = (mni_plain.labels[k] for k in ("grey_matter", "white_matter", "brain"))
    assert mni_plain.modality == "MRI" and mni_plain.region == "brain"
    assert not (grey & white).any()
    assert not (grey & ~brain).any() and not (white & ~brain).any()
    assert 1200 < mni_plain.label_volume_ml("brain") < 2200
    assert np.median(mni_plain.image.array[white]) > np.median(mni_plain.image.array[grey])  # T1 contrast


def test_mni_augmentation_changes_geometry_but_keeps_label_volumes(mni_plain):
    for seed in (0, 1):
        case = mni152_case(seed=seed, resolution_mm=2)
        assert not (case.image.array.shape == mni_plain.image.array.shape
                    and np.allclose(case.image.direction, mni_plain.image.direction))
        for key in ("brain", "grey_matter", "white_matter"):
            assert case.label_volume_ml(key) == pytest.approx(mni_plain.label_volume_ml(key), rel=0.1), key
        assert not (case.labels["grey_matter"] & case.labels["white_matter"]).any()


def test_mni_augmentation_is_deterministic_per_seed():
    a, b = mni152_case(seed=5, resolution_mm=4), mni152_case(seed=5, resolution_mm=4)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels["grey_matter"], b.labels["grey_matter"])


def test_the_cli_writes_the_mni_case(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["phantom", "--mni", "--seed", "4", "--spacing", "4",
                              "-o", str(tmp_path / "mni.nii.gz"), "--label", str(tmp_path / "mni.seg.nrrd")])
    assert run(args) == 0
    geometry, masks = read_segmentation(tmp_path / "mni.seg.nrrd", load_ontology())
    assert set(masks) == {"brain", "grey_matter", "white_matter"}
    assert geometry.same_geometry(read_image(tmp_path / "mni.nii.gz"), tolerance=1e-3)
