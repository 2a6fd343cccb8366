"""Prognosis model folders: round trip, sha256 check, no pickle, and the bundled larynx model."""

import json

import numpy as np
import pytest
import torch

from DuPLUSLib.errors import ModelBundleError, OutputPathError
from DuPLUSLib.prognosis.bundle import default_prognosis_dir, load_prognosis_bundle
from DuPLUSLib.prognosis.cohort import cohort_from_frame, larynx_frame
from DuPLUSLib.prognosis.features import encode_patients
from DuPLUSLib.prognosis.model import PrognosisConfig
from DuPLUSLib.prognosis.pipeline import train_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    cohort = cohort_from_frame(larynx_frame(), "time_years", "death")
    inputs = encode_patients(cohort.records)
    bundle = train_bundle(inputs, cohort, PrognosisConfig(use=("numeric",), n_bootstrap=3))
    folder = bundle.save(tmp_path_factory.mktemp("models") / "larynx")
    return bundle, folder, inputs


def test_a_saved_model_predicts_exactly_as_before(trained):
    bundle, folder, inputs = trained
    loaded = load_prognosis_bundle(folder)
    np.testing.assert_allclose(loaded.model.predict_risk(inputs), bundle.model.predict_risk(inputs), rtol=1e-6)
    for a, b in zip(loaded.model.predict_survival_interval(inputs, [2, 5]),
                    bundle.model.predict_survival_interval(inputs, [2, 5])):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert loaded.reference == bundle.reference


def test_a_model_folder_holds_only_json_and_safetensors(trained):
    _, folder, _ = trained
    assert sorted(p.name for p in folder.iterdir()) == ["prognosis.json", "weights.safetensors"]


def test_changed_weights_are_refused(trained, tmp_path):
    _, folder, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("prognosis.json", "weights.safetensors"):
        (copy / name).write_bytes((folder / name).read_bytes())
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="sha256"):
        load_prognosis_bundle(copy)


def test_a_weights_path_outside_the_folder_is_refused(trained, tmp_path):
    _, folder, _ = trained
    copy = tmp_path / "escape"
    copy.mkdir()
    config = json.loads((folder / "prognosis.json").read_text(encoding="utf-8"))
    config["files"]["weights"]["path"] = "../weights.safetensors"
    (copy / "prognosis.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "weights.safetensors").write_bytes((folder / "weights.safetensors").read_bytes())
    with pytest.raises(ModelBundleError, match="outside the model folder"):
        load_prognosis_bundle(copy)


def test_saving_never_overwrites_a_folder_silently(trained):
    bundle, folder, _ = trained
    with pytest.raises(OutputPathError, match="not empty"):
        bundle.save(folder)


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(ModelBundleError, match="has no prognosis.json"):
        load_prognosis_bundle(tmp_path)


def test_bundled_model_is_the_larynx_ehr_model():
    bundle = load_prognosis_bundle()
    assert bundle.path == default_prognosis_dir()
    assert bundle.training["patients"] == 90 and bundle.training["events"] == 50
    assert bundle.reference.labels == ["low", "intermediate", "high"] and bundle.reference.time_unit == "years"
    assert "text" in bundle.model.config.use and not bundle.uses_image
    assert 0.55 < bundle.training["cross_validation"]["summary"]["duplus"]["c_index_mean"] < 0.8


def test_readout_notes_fields_the_training_cohort_never_recorded(trained):
    from DuPLUSLib.prognosis.ehr import EHRRecord

    bundle, _, _ = trained
    assert bundle.readout(EHRRecord(age=60, stage="II")).notes == []
    notes = bundle.readout(EHRRecord(age=60, stage="II", hpv="positive")).notes
    assert len(notes) == 1 and "did not record hpv" in notes[0] and "age, site, stage" in notes[0]
