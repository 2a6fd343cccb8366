"""Image features for prognosis and the synthetic cohort: measurements, pooled network features, signal."""

import numpy as np
import pytest
import torch

from DuPLUSLib.imageio import SegmentMask, VolumeImage, write_image, write_segmentation
from DuPLUSLib.ontology import load_ontology
from DuPLUSLib.prognosis.image_features import (NoTumourError, measurements_vector, pooled_network_features,
                                                read_case, tumour_measurements)


def _ball(shape, centre, radius):
    k, j, i = np.indices(shape)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def tiny_case(seed: int):
    """A 24^3 'CT' with a primary of random size and density and, in half the cases, a node."""
    rng = np.random.default_rng(seed)
    shape = (24, 24, 24)
    array = rng.normal(0, 10, shape).astype(np.float32)
    gtvp = _ball(shape, (12, 10, 10), rng.uniform(2, 7))
    array[gtvp] += rng.uniform(20, 90)
    masks = {"gtvp": gtvp, "gtvn": _ball(shape, (12, 18, 18), rng.uniform(1.5, 4)) if rng.random() < 0.5
             else np.zeros(shape, bool)}
    return VolumeImage(array, (2.0, 2.0, 2.0)), masks


def test_measurements_are_volumes_in_ml_and_mean_density():
    image = VolumeImage(np.full((10, 10, 10), 5.0), (2.0, 1.0, 1.5))
    gtvp = np.zeros((10, 10, 10), bool)
    gtvp[2:4, 2:6, 2:7] = True
    image.array[gtvp] = 60.0
    values = tumour_measurements(image, {"gtvp": gtvp})
    assert values == {"gtvp_volume_ml": pytest.approx(40 * 3.0 / 1000), "gtvn_volume_ml": 0.0,
                      "gtvp_mean_intensity": pytest.approx(60.0)}
    np.testing.assert_allclose(measurements_vector(values), [np.log1p(0.12), 0.0, 60.0])


def test_nodes_without_a_primary_are_measured_with_density_missing():
    image = VolumeImage(np.zeros((6, 6, 6)), (1.0, 1.0, 1.0))
    values = tumour_measurements(image, {"gtvn": np.ones((6, 6, 6), bool)})
    assert values["gtvn_volume_ml"] == pytest.approx(0.216) and np.isnan(values["gtvp_mean_intensity"])


def test_a_segmentation_file_without_tumour_is_refused_naming_its_segments(tmp_path):
    image, masks = tiny_case(0)
    write_image(image, tmp_path / "ct.nrrd")
    ontology = load_ontology()
    write_segmentation([SegmentMask(ontology.structures["mandible"], masks["gtvp"]),
                        SegmentMask(ontology.structures["gtvn"], np.zeros_like(masks["gtvp"]))],
                       image, tmp_path / "seg.seg.nrrd")
    with pytest.raises(NoTumourError, match="its segments are: gtvn, mandible"):
        read_case(tmp_path / "ct.nrrd", tmp_path / "seg.seg.nrrd")


def test_pooled_network_features_follow_the_tumour(tmp_path):
    from engine_fixtures import save_random_bundle

    from DuPLUSLib.bundle import load_bundle

    torch.set_num_threads(1)
    bundle = load_bundle(save_random_bundle(tmp_path / "seg_model", patch_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0)))
    image, masks = tiny_case(3)
    masks["gtvn"] = np.zeros_like(masks["gtvp"])
    features = pooled_network_features(bundle, image, masks)
    channels = bundle.network.config.channels[-1]
    assert features.shape == (2 * channels,) and np.isfinite(features).all()
    assert np.any(features[:channels] != 0) and np.all(features[channels:] == 0)  # no nodes: zeros
    moved = {"gtvp": np.roll(masks["gtvp"], 6, axis=2), "gtvn": masks["gtvn"]}
    image_moved = image.with_array(np.roll(image.array, 6, axis=2))
    assert not np.allclose(pooled_network_features(bundle, image_moved, moved)[:channels], features[:channels])


def test_synthetic_cohort_ehr_is_valid_and_follows_the_literature():
    from DuPLUSLib.prognosis.ehr import parse_ehr
    from DuPLUSLib.prognosis.synthetic import synthetic_patients

    patients = synthetic_patients(120, seed=1, case_factory=tiny_case)
    records = [parse_ehr(p.ehr) for p in patients]
    hpv_positive = np.array([r.hpv == "positive" for r in records])
    oropharynx = np.array([r.site == "oropharynx" for r in records])
    never = np.array([r.smoking == "never" for r in records])
    assert hpv_positive[oropharynx].mean() > 0.4 > hpv_positive[~oropharynx].mean()
    assert never[hpv_positive].mean() > never[~hpv_positive].mean()
    assert 0.3 < np.mean([p.death for p in patients]) < 0.9


def test_in_the_synthetic_cohort_image_features_add_to_the_ehr():
    from DuPLUSLib.prognosis.cohort import cohort_from_frame
    from DuPLUSLib.prognosis.evaluation import cross_validate
    from DuPLUSLib.prognosis.features import encode_patients
    from DuPLUSLib.prognosis.model import PrognosisConfig, PrognosisModel
    from DuPLUSLib.prognosis.synthetic import synthetic_patients

    import pandas as pd

    torch.set_num_threads(1)
    patients = synthetic_patients(240, seed=2, case_factory=tiny_case)
    frame = pd.DataFrame([{**p.ehr, "time": p.time_years, "death": p.death} for p in patients])
    cohort = cohort_from_frame(frame, "time", "death")
    image = np.stack([measurements_vector(tumour_measurements(p.image, p.masks)) for p in patients])
    inputs = encode_patients(cohort.records, image=image, image_names=("a", "b", "c"))
    factory = lambda use: (lambda: PrognosisModel(PrognosisConfig(use=use, n_bootstrap=0, inner_splits=1, max_epochs=100)))  # noqa: E731
    result = cross_validate(inputs, cohort.time, cohort.event,
                            {"ehr": factory(("numeric",)), "ehr+image": factory(("numeric", "image"))}, folds=3, repeats=1)
    summary = result.summary()
    assert summary["ehr+image"]["c_index_mean"] > summary["ehr"]["c_index_mean"] + 0.02
