"""Label-driven synthesis: deterministic per seed, masks that line up with what is painted, every
modality, and a training run on synthesised cases that learns."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from DuPLUSLib.imageio import VolumeImage
from DuPLUSLib.synthesis import SynthesisSettings, label_map_from_real_ct, synthesise
from DuPLUSLib.synthesis.labelmap import AIR_OUTSIDE
from DuPLUSLib.training.config import ConfigError, TrainingConfig
from DuPLUSLib.training.data import case_specs
from DuPLUSLib.training.decathlon import toy_case, write_toy_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source():
    """The toy CT (a body with a bright liver and a brighter tumour) read as a real CT's label map."""
    image, labels = toy_case(3, shape=(28, 28, 28), spacing=(3.0, 3.0, 3.0))
    return label_map_from_real_ct("toy", image, labels, {"liver": (1, 2), "liver_tumour": (2,)}, "abdomen")


def test_unlabelled_voxels_of_a_real_ct_become_tissues_read_from_their_hounsfield_units(source):
    values = set(np.unique(source.labels.array).tolist())
    assert {1, 2, AIR_OUTSIDE} <= values
    assert 0 not in values  # every voxel is painted as something
    assert source.family[AIR_OUTSIDE] == "air"
    median_liver, _ = source.ct_statistics[1]
    assert 200 < median_liver < 300  # the toy paints its liver at 250 HU
    assert source.ct_statistics[AIR_OUTSIDE][0] < -900


def test_the_same_seed_gives_the_same_case_and_another_seed_another(source):
    first, masks_first = synthesise(source, "MRI", seed=11)
    again, masks_again = synthesise(source, "MRI", seed=11)
    other, _ = synthesise(source, "MRI", seed=12)
    assert np.array_equal(first.array, again.array)
    assert all(np.array_equal(masks_first[k], masks_again[k]) for k in masks_first)
    assert first.array.shape != other.array.shape or not np.allclose(first.array, other.array)


@pytest.mark.parametrize("modality", ["CT", "MRI", "PET", "US"])
def test_every_modality_gives_finite_values_on_the_masks_grid(source, modality):
    image, masks = synthesise(source, modality, seed=5)
    assert set(masks) == {"liver", "liver_tumour"}
    assert all(mask.shape == image.array.shape for mask in masks.values())
    assert np.isfinite(image.array).all()
    assert image.array.max() > image.array.min()


def test_masks_line_up_with_the_painted_image(source):
    """CT paints each label at its real HU: the tumour (600 HU in the toy) is brighter than the rest
    of the liver (250 HU), which is brighter than the body around it, wherever the deformation
    and crop moved them."""
    for seed in range(4):
        image, masks = synthesise(source, "CT", seed=seed)
        tumour, liver = masks["liver_tumour"], masks["liver"] & ~masks["liver_tumour"]
        if tumour.sum() < 5 or liver.sum() < 5:
            continue
        inner = np.median(image.array[tumour])
        organ = np.median(image.array[liver])
        body = np.median(image.array[~masks["liver"] & (image.array > -500)])
        assert inner > organ + 150 > body + 150


@pytest.fixture(scope="module")
def vessel_source():
    """The toy CT read with its bright inner structure named the aorta (600 HU in the source)."""
    image, labels = toy_case(3, shape=(28, 28, 28), spacing=(3.0, 3.0, 3.0))
    return label_map_from_real_ct("toy", image, labels, {"liver": (1,), "aorta": (2,)}, "abdomen")


def _medians(image, masks) -> dict[str, float]:
    return {key: float(np.median(image.array[mask])) for key, mask in masks.items() if mask.sum() >= 5}


def test_contrast_phases_paint_blood_as_a_plain_ct_or_an_angiogram_shows_it(vessel_source):
    """With contrast phases the aorta is painted at the phase's blood HU whatever the source shows:
    near water in a plain scan, 200-500 HU in an angiogram; never the source's own 600 HU.
    Without them synthesis keeps the source's HU, only nudged, as every earlier model was trained."""
    phases = SynthesisSettings(contrast_phases=True)
    aorta = [_medians(*synthesise(vessel_source, "CT", seed, settings=phases)).get("aorta") for seed in range(12)]
    aorta = [value for value in aorta if value is not None]
    assert len(aorta) >= 8
    assert all(value < 540 for value in aorta)
    assert any(value < 90 for value in aorta) and any(value > 190 for value in aorta)
    plain = [value for seed in range(4) if (value := _medians(*synthesise(vessel_source, "CT", seed)).get("aorta"))]
    assert plain and all(value > 300 for value in plain)
    first, _ = synthesise(vessel_source, "CT", 3, settings=phases)
    again, _ = synthesise(vessel_source, "CT", 3, settings=phases)
    assert np.array_equal(first.array, again.array)


def test_an_unannotated_artery_is_painted_as_blood_though_its_plain_hu_read_as_soft_tissue():
    """Vessels a mapping ignores but names (``unannotated``) light up with the annotated ones: an
    angiogram's brightness does not stop where the labels do. Painted on the source's own grid, so
    the unannotated label's voxels are known."""
    from DuPLUSLib.synthesis.contrast import paint

    image, labels = toy_case(3, shape=(28, 28, 28), spacing=(3.0, 3.0, 3.0))
    plain = image.with_array(np.where(labels == 2, 40, image.array).astype(image.array.dtype))  # blood, no contrast
    source = label_map_from_real_ct("toy", plain, labels, {"liver": (1,)}, "abdomen", {"iliac_artery_left": (2,)})
    assert source.family[2] == "soft" and source.anatomy_of(2) == "iliac_artery_left" and source.key_of(2) is None
    grid, spacing = source.labels.array.astype(np.int64), np.array(source.labels.spacing)[::-1]
    artery = [float(np.median(paint(source, grid, spacing, "CT", np.random.default_rng(seed), contrast_phases=True)[grid == 2]))
              for seed in range(12)]
    assert any(value < 90 for value in artery) and any(value > 190 for value in artery)


def synth_option_configs(tmp_path: Path, option: str) -> tuple[Path, dict, TrainingConfig, TrainingConfig]:
    """A toy synth dataset's folder and entry, and its config without and with ``option``; an option
    added since older runs must leave their fingerprint alone when off, and change it when on."""
    data = write_toy_dataset(tmp_path / "Task99_Toy", cases=1)
    dataset = {"kind": "synth", "path": str(data), "mapping": str(data / "mapping.json"), "cases": 2,
               "modalities": ["CT", "MRI"]}
    plain = TrainingConfig.from_dict({"name": "s", "datasets": [dataset]})
    explicit = TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {option: False}]})
    on = TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {option: True}]})
    assert plain.fingerprint() == explicit.fingerprint() != on.fingerprint()
    return data, dataset, plain, on


def test_contrast_phases_are_a_synth_ct_option_and_leave_older_run_fingerprints_alone(tmp_path):
    data, dataset, plain, phased = synth_option_configs(tmp_path, "contrast_phases")
    specs = case_specs(phased.datasets, seed=0)
    assert {s.modality for s in specs if s.synthesis.contrast_phases} == {"CT"}
    assert not any(s.synthesis.contrast_phases for s in case_specs(plain.datasets, seed=0))
    from dataclasses import replace

    from DuPLUSLib.training.synthetic import load_synthetic_case

    phased_ct = next(s for s in specs if s.synthesis.contrast_phases)
    with_phases, masks = load_synthetic_case(phased_ct)
    without, masks_without = load_synthetic_case(replace(phased_ct, synthesis=replace(phased_ct.synthesis, contrast_phases=False)))
    assert all(np.array_equal(masks[k], masks_without[k]) for k in masks)  # the same anatomy, painted otherwise
    assert not np.array_equal(with_phases.array, without.array)
    with pytest.raises(ConfigError, match="contrast_phases changes only synthesised CT; add CT to 'modalities'"):
        TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {"contrast_phases": True, "modalities": ["MRI"]}]})
    mapping = json.loads((data / "mapping.json").read_text(encoding="utf-8"))
    if mapping.get("ignore") and not mapping.get("unannotated"):
        with pytest.warns(UserWarning, match="names none of its ignored values"):
            case_specs(phased.datasets, seed=0)
    unnamed = tmp_path / "unnamed.json"
    unnamed.write_text(json.dumps(mapping | {"ignore": [9]}), encoding="utf-8")
    with pytest.warns(UserWarning, match="unnamed.json' names none of its ignored values"):
        case_specs(TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {"contrast_phases": True,
                                                                                 "mapping": str(unnamed)}]}).datasets, seed=0)
    named = tmp_path / "named.json"
    named.write_text(json.dumps(mapping | {"ignore": [9], "unannotated": {"aorta": [9]}}), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        case_specs(TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {"contrast_phases": True,
                                                                                 "mapping": str(named)}]}).datasets, seed=0)
    with pytest.raises(ConfigError, match="contrast_phases changes only CT synthesised from a CT"):
        TrainingConfig.from_dict({"name": "s", "datasets": [{"kind": "synth", "source": "mni152", "modalities": ["CT"],
                                                             "contrast_phases": True}]})
    with pytest.raises(ConfigError, match="contrast_phases applies to synth datasets only"):
        TrainingConfig.from_dict({"name": "s", "datasets": [{"kind": "phantom", "contrast_phases": True}]})


def test_in_plane_crops_narrow_the_field_of_view_around_the_anatomy_and_keep_images_and_masks_aligned(source):
    """A drawn in-plane field of view cuts the body at the image edge (a cardiac CT's 200 mm, an MRI
    that cuts the flanks). The crop keeps the geometry: the painted tumour stays where its mask is,
    and its world position (origin) moves with the first kept voxel. Off, cases are as before."""
    from dataclasses import replace

    narrow = replace(SynthesisSettings().spatial, in_plane_probability=1.0, in_plane_mm=(30.0, 45.0),
                     slab_probability=0.0, partial_probability=0.0)
    full = replace(narrow, in_plane_probability=0.0)
    cropped, masks = synthesise(source, "CT", 7, settings=SynthesisSettings(spatial=narrow, in_plane_crops=True))
    whole, whole_masks = synthesise(source, "CT", 7, settings=SynthesisSettings(spatial=full, in_plane_crops=True))
    assert cropped.array.shape[0] == whole.array.shape[0]  # the slices are all kept
    assert all(c < w for c, w in zip(cropped.array.shape[1:], whole.array.shape[1:]))
    assert all(10 <= n <= 15 for n in cropped.array.shape[1:])  # 30-45 mm at 3 mm
    assert masks["liver"].any()  # centred on the anatomy
    assert masks["liver_tumour"].sum() >= 5, "this seed's crop should keep some of the tumour"
    assert float(np.median(cropped.array[masks["liver_tumour"]])) > float(np.median(cropped.array[~masks["liver"]])) + 200
    first = np.argwhere(masks["liver"])[0]  # the same anatomy lies at the same world point in both
    world = cropped.ijk_to_lps @ np.array([first[2], first[1], first[0], 1.0])
    k, j, i = np.round(np.linalg.solve(whole.ijk_to_lps, world)[:3][::-1]).astype(int)
    assert whole_masks["liver"][k, j, i]
    off, off_masks = synthesise(source, "CT", 7, settings=SynthesisSettings(spatial=narrow))
    assert off.array.shape == whole.array.shape  # off, nothing is cropped in-plane, whatever the probability
    # the crop draws from its own stream: a case it leaves whole is the very case made without the option
    assert np.array_equal(off.array, whole.array)
    assert all(np.array_equal(off_masks[key], whole_masks[key]) for key in off_masks)


def test_in_plane_crops_are_a_synth_option_that_leaves_older_run_fingerprints_alone(tmp_path):
    _, _, _, cropped = synth_option_configs(tmp_path, "in_plane_crops")
    assert all(s.synthesis.in_plane_crops for s in case_specs(cropped.datasets, seed=0))
    with pytest.raises(ConfigError, match="in_plane_crops applies to synth datasets only"):
        TrainingConfig.from_dict({"name": "s", "datasets": [{"kind": "phantom", "in_plane_crops": True}]})


def test_label_contrasts_paint_each_label_at_its_own_intensity_on_the_same_anatomy(source):
    """With label_contrasts a drawn MRI case paints every label at its own random intensity
    (SynthSeg), so the tumour's place within the liver no longer says how bright it is. The anatomy
    and every other draw are the case's own: a case it does not draw is the case made without the
    option, and CT is never changed."""
    from dataclasses import replace

    every = SynthesisSettings(label_contrasts=True, label_contrast_probability=1.0)
    none = replace(every, label_contrast_probability=0.0)
    plain, plain_masks = synthesise(source, "MRI", 7)
    # per-label intensities differ, per seed, from the family-based ones on the very same masks
    relations = set()
    for seed in range(7, 13):
        painted, masks = synthesise(source, "MRI", seed, settings=every)
        reference, reference_masks = synthesise(source, "MRI", seed)
        assert all(np.array_equal(masks[k], reference_masks[k]) for k in masks)
        assert not np.allclose(painted.array, reference.array)
        tumour = float(np.median(painted.array[masks["liver_tumour"]]))
        liver = float(np.median(painted.array[masks["liver"] & ~masks["liver_tumour"]]))
        relations.add(tumour > liver)
    assert relations == {True, False}, "the tumour should be sometimes brighter, sometimes darker than the liver"
    undrawn, undrawn_masks = synthesise(source, "MRI", 7, settings=none)
    assert np.array_equal(undrawn.array, plain.array)
    assert all(np.array_equal(undrawn_masks[k], plain_masks[k]) for k in plain_masks)
    ct_with, _ = synthesise(source, "CT", 7, settings=every)
    assert np.array_equal(ct_with.array, synthesise(source, "CT", 7)[0].array)


def test_label_contrasts_are_a_synth_mri_option_that_leaves_older_run_fingerprints_alone(tmp_path):
    _, dataset, _, painted = synth_option_configs(tmp_path, "label_contrasts")
    specs = case_specs(painted.datasets, seed=0)
    assert {s.modality for s in specs if s.synthesis.label_contrasts} == {"MRI"}
    with pytest.raises(ConfigError, match="label_contrasts changes only synthesised MRI"):
        TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {"label_contrasts": True, "modalities": ["CT"]}]})
    with pytest.raises(ConfigError, match="label_contrasts applies to synth datasets only"):
        TrainingConfig.from_dict({"name": "s", "datasets": [{"kind": "mni152", "label_contrasts": True}]})


def test_resize_organs_grows_into_background_shrinks_to_it_and_never_overwrites_another_organ():
    """An organ grows by millimetres into the tissue around it, or loses a rim of that depth to
    the nearest background tissue; the organ beside it is never touched."""
    from dataclasses import replace

    from DuPLUSLib.synthesis.spatial import SpatialSettings, resize_organs

    labels = np.full((36, 36, 50), 7, np.int16)  # fat everywhere
    labels[:, :, 40:] = 8  # another background tissue
    labels[8:28, 8:28, 5:25] = 1  # an organ, 20 voxels (60 mm) wide
    labels[8:28, 8:28, 25:29] = 2  # its neighbour, touching it
    spacing = np.array([3.0, 3.0, 3.0])
    always = replace(SpatialSettings(), organ_resize_mm_probability=1.0, organ_resize_mm=(6.0, 6.0))
    sizes = {True: 0, False: 0}
    for seed in range(8):
        out = resize_organs(labels, spacing, [1], {7, 8}, np.random.default_rng(seed), always)
        assert np.array_equal(out == 2, labels == 2), "the neighbouring organ must be left alone"
        assert set(np.unique(out)) <= {1, 2, 7, 8}
        grown = (out == 1).sum() > (labels == 1).sum()
        sizes[grown] += 1
        if grown:  # two voxels (6 mm) more on each free face, into fat only
            assert (out[8:28, 8:28, 3] == 1).all() and not (out[8:28, 8:28, 2] == 1).any()
        else:  # two voxels less on each face (its neighbour's too), given to the nearest background tissue
            assert (out == 1).sum() == 16 ** 3
            assert (out[8:10, 8:28, 5:25] == 7).all()
    assert sizes[True] and sizes[False], "both growth and shrinkage should be drawn over 8 seeds"
    never = replace(always, organ_resize_mm_probability=0.0)
    assert np.array_equal(resize_organs(labels, spacing, [1], {7, 8}, np.random.default_rng(0), never), labels)


def test_organ_resizes_are_a_synth_option_that_leaves_older_run_fingerprints_alone(tmp_path, source):
    _, _, _, resized = synth_option_configs(tmp_path, "organ_resizes")
    assert all(s.synthesis.organ_resizes for s in case_specs(resized.datasets, seed=0))
    with pytest.raises(ConfigError, match="organ_resizes applies to synth datasets only"):
        TrainingConfig.from_dict({"name": "s", "datasets": [{"kind": "phantom", "organ_resizes": True}]})
    plain, plain_masks = synthesise(source, "CT", 9)
    changed, changed_masks = synthesise(source, "CT", 9, settings=SynthesisSettings(organ_resizes=True))
    assert plain_masks["liver"].sum() != changed_masks["liver"].sum()


def test_strong_deformations_scale_the_same_draws_and_move_the_anatomy_further(tmp_path, source):
    from DuPLUSLib.synthesis.spatial import SpatialSettings, deform_labels

    _, _, _, warped = synth_option_configs(tmp_path, "strong_deformations")
    assert all(s.synthesis.strong_deformations and s.name.endswith("-warps") for s in case_specs(warped.datasets, seed=0))
    with pytest.raises(ConfigError, match="strong_deformations applies to synth datasets only"):
        TrainingConfig.from_dict({"name": "s", "datasets": [{"kind": "mni152", "strong_deformations": True}]})
    cube = np.zeros((40, 40, 40), dtype=np.int16)
    cube[12:28, 12:28, 12:28] = 1
    labels = VolumeImage(cube, spacing=(3.0, 3.0, 3.0))

    def overlap(settings: SpatialSettings, seed: int) -> float:
        moved = deform_labels(labels, np.random.default_rng(seed), settings, fill=0).array == 1
        return 2 * (moved & (cube == 1)).sum() / (moved.sum() + (cube == 1).sum())

    usual, strong = SpatialSettings(), SpatialSettings().stronger()
    assert (strong.scale, strong.rotation_degrees, strong.displacement_mm) == (0.2, 15.0, 12.0)
    assert np.mean([overlap(strong, seed) for seed in range(6)]) < np.mean([overlap(usual, seed) for seed in range(6)])
    plain, plain_masks = synthesise(source, "CT", 9)
    changed, changed_masks = synthesise(source, "CT", 9, settings=SynthesisSettings(strong_deformations=True))
    assert plain.array.shape == changed.array.shape and plain_masks.keys() == changed_masks.keys()
    assert not np.array_equal(plain_masks["liver"], changed_masks["liver"])


def test_a_synth_dataset_makes_recipes_per_modality_and_refuses_a_modality_without_structures(tmp_path):
    data = write_toy_dataset(tmp_path / "Task99_Toy", cases=2)
    dataset = {"kind": "synth", "path": str(data), "mapping": str(data / "mapping.json"), "cases": 3,
               "modalities": ["CT", "MRI"]}
    config = TrainingConfig.from_dict({"name": "s", "datasets": [dataset]})
    specs = case_specs(config.datasets, seed=0)
    assert len(specs) == 2 * 2 * 3
    assert {s.modality for s in specs} == {"CT", "MRI"} and {s.entry for s in specs} == {0, 1}
    tumour_only = tmp_path / "tumour_only.json"  # MRI abdomen prompts for no liver tumour
    tumour_only.write_text('{"modality": "CT", "region": "abdomen", "labels": {"2": "liver_tumour"}, "ignore": [1]}')
    bad = TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {"mapping": str(tumour_only)}]})
    with pytest.raises(ConfigError, match="no structure it annotates is a prompt of MRI abdomen"):
        case_specs(bad.datasets, seed=0)
    with pytest.raises(ConfigError, match="synth modalities must be among"):
        TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {"modalities": ["XRAY"]}]})


def test_a_few_training_steps_on_synthesised_cases_lower_the_loss(tmp_path):
    from DuPLUSLib.training.loop import train

    data = write_toy_dataset(tmp_path / "Task99_Toy", cases=2, shape=(28, 28, 28))
    config = TrainingConfig.from_dict({
        "name": "synth",
        "network": {"channels": [8, 16], "encoder_blocks": 1, "decoder_blocks": 1, "conditioned_decoder_stages": 1,
                    "head_embed": 16, "condition_hidden": 16, "head_channels": 4},
        "inference": {"spacing": [3, 3, 3], "patch_size": [16, 16, 16], "overlap": 0.25},
        "prompts": {"code": "onehot"},
        "datasets": [{"kind": "synth", "path": str(data), "mapping": str(data / "mapping.json"), "cases": 3,
                      "modalities": ["CT"]}],
        "training": {"steps": 40, "batch_size": 2, "learning_rate": 0.01, "warmup_steps": 2, "ema_decay": 0.5,
                     "checkpoint_every": 40, "log_every": 1, "threads": 1, "data_workers": 1, "precision": "fp32",
                     "augment": False},
    })
    losses: list[float] = []
    train(config, tmp_path / "run", device="cpu", progress=False, on_step=lambda step, loss: losses.append(loss))
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def test_a_synth_case_is_named_after_its_options_so_a_cache_of_other_options_is_not_reused(tmp_path):
    """A cached case is found by its name: two datasets alike but for an option must not share one."""
    _, dataset, plain, _ = synth_option_configs(tmp_path, "organ_resizes")
    every = TrainingConfig.from_dict({"name": "s", "datasets": [dataset | {
        "modalities": ["CT", "MRI"], "contrast_phases": True, "label_contrasts": True, "organ_resizes": True,
        "in_plane_crops": True}]})
    plain_names = {s.modality: s.name for s in case_specs(plain.datasets, seed=0)}
    names = {s.modality: s.name for s in case_specs(every.datasets, seed=0)}
    assert names["CT"] == plain_names["CT"] + "-phases-organs-fov"  # label contrasts paint MRI only
    assert names["MRI"] == plain_names["MRI"] + "-labels-organs-fov"  # contrast phases paint CT only
    assert all(spec.synthesis.tags() == () for spec in case_specs(plain.datasets, seed=0))
