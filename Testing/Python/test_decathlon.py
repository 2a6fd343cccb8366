"""Decathlon-format datasets: the layout, the label mapping, partial labels and every refused input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from DuPLUSLib.imageio import VolumeImage, write_image
from DuPLUSLib.training.config import ConfigError, DatasetSpec
from DuPLUSLib.training.data import case_specs
from DuPLUSLib.training.decathlon import (
    DatasetError,
    decathlon_case_specs,
    iter_decathlon_cases,
    load_decathlon_case,
    load_mapping,
    read_dataset_json,
    toy_case,
    write_toy_dataset,
)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "Task99_Toy", cases=2)


def write_mapping(folder: Path, document: dict, name: str = "mapping.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def spec(folder: Path, mapping: Path | None = None) -> DatasetSpec:
    return DatasetSpec(kind="decathlon", path=str(folder), mapping=str(mapping or folder / "mapping.json"))


# ---------------------------------------------------------------------------------- the good path
def test_a_decathlon_folder_becomes_one_case_spec_per_training_pair(toy):
    specs = decathlon_case_specs(spec(toy), index=3)
    assert [s.name for s in specs] == ["d3-toy_000", "d3-toy_001"]
    assert {(s.kind, s.modality, s.region, s.dataset) for s in specs} == {("decathlon", "CT", "abdomen", 3)}


def test_the_training_pipeline_finds_decathlon_cases_through_case_specs(toy):
    specs = case_specs([spec(toy)], seed=0)
    assert len(specs) == 2 and specs[0].kind == "decathlon"


def test_a_tumour_value_also_counts_as_its_organ_when_mapped_so(toy):
    image, masks = load_decathlon_case(decathlon_case_specs(spec(toy), 0)[0])
    assert set(masks) == {"liver", "liver_tumour"}  # exactly the mapped structures are annotated
    assert masks["liver_tumour"].any()
    assert not (masks["liver_tumour"] & ~masks["liver"]).any()  # the tumour lies inside the liver mask
    assert masks["liver"].shape == image.array.shape


def test_geometry_is_read_from_the_files(toy):
    expected, _ = toy_case(0)
    image, _ = load_decathlon_case(decathlon_case_specs(spec(toy), 0)[0])
    assert image.same_geometry(expected)


def test_mapping_accepts_synonyms_values_to_lists_and_ignored_values(tmp_path):
    path = write_mapping(tmp_path, {"modality": "ct", "region": "Abdomen",
                                    "labels": {"1": "Liver", "2": ["liver", "liver tumor"], "spleen": 4},
                                    "ignore": [3]})
    mapping = load_mapping(path)
    assert mapping.structures == {"liver": (1, 2), "liver_tumour": (2,), "spleen": (4,)}
    assert mapping.known_values == {0, 1, 2, 3, 4}
    masks = mapping.masks(np.array([0, 1, 2, 3, 4]))
    assert masks["liver"].tolist() == [False, True, True, False, False]


def test_cases_are_read_one_at_a_time(toy):
    cases = iter_decathlon_cases(toy, toy / "mapping.json")
    entry, mapping, image, masks = next(cases)
    assert entry.name == "toy_000" and mapping.modality == "CT"


# ---------------------------------------------------------------------------------- bad input
def test_dataset_json_naming_missing_files_is_refused_with_their_names(toy):
    (toy / "labelsTr" / "toy_001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="labelsTr/toy_001.nii.gz"):
        read_dataset_json(toy)


def test_a_folder_without_dataset_json_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no dataset.json"):
        read_dataset_json(tmp_path / "empty")


def test_label_values_missing_from_the_mapping_are_named(toy):
    mapping = write_mapping(toy, {"modality": "CT", "region": "abdomen", "labels": {"1": "liver"}}, "liver_only.json")
    with pytest.raises(DatasetError, match=r"toy_000.nii.gz' holds value\(s\) 2 .*liver_only.json"):
        load_decathlon_case(decathlon_case_specs(spec(toy, mapping), 0)[0])


def test_ignored_values_are_accepted_and_annotate_nothing(toy):
    mapping = write_mapping(toy, {"modality": "CT", "region": "abdomen", "labels": {"1": "liver"}, "ignore": [2]},
                            "ignore.json")
    _, masks = load_decathlon_case(decathlon_case_specs(spec(toy, mapping), 0)[0])
    assert set(masks) == {"liver"}


def test_images_and_labels_of_different_geometry_are_refused(toy):
    image, labels = toy_case(0)
    shifted = VolumeImage(labels, image.spacing, tuple(o + 5.0 for o in image.origin))
    write_image(shifted, toy / "labelsTr" / "toy_000.nii.gz")
    with pytest.raises(DatasetError, match="toy_000.nii.gz' and 'toy_000.nii.gz' have different geometry"):
        load_decathlon_case(decathlon_case_specs(spec(toy), 0)[0])


def test_a_structure_the_ontology_does_not_know_is_refused_when_the_dataset_is_named(toy):
    mapping = write_mapping(toy, {"modality": "CT", "region": "abdomen", "labels": {"1": "unicorn"}}, "bad.json")
    with pytest.raises(DatasetError, match="bad.json.*'unicorn' is not a known structure"):
        case_specs([spec(toy, mapping)], seed=0)  # before any worker starts


def test_a_structure_of_another_region_is_refused_with_the_choices(tmp_path):
    path = write_mapping(tmp_path, {"modality": "CT", "region": "abdomen", "labels": {"1": "brainstem"}})
    with pytest.raises(DatasetError, match="not a structure of CT abdomen; choose one of: liver"):
        load_mapping(path)


@pytest.mark.parametrize(
    "document, message",
    [
        ({"modality": "CT", "labels": {"1": "liver"}}, "needs 'region'"),
        ({"modality": "XR", "region": "abdomen", "labels": {"1": "liver"}}, "'XR' is not a known modality"),
        ({"modality": "CT", "region": "abdomen", "labels": {"0": "liver"}}, "0 is background"),
        ({"modality": "CT", "region": "abdomen", "labels": {"liver": ["one"]}}, "'one' is not an integer"),
        ({"modality": "CT", "region": "abdomen", "labels": {"1": "liver"}, "colour": 1}, "unknown key"),
        ({"modality": "CT", "region": "abdomen", "labels": {}}, "non-empty"),
        ({"modality": "CT", "region": "abdomen", "labels": {"1": "liver"}, "ignore": [2],
          "unannotated": {"aorta": [1]}}, r"unannotated 'aorta' names value\(s\) \[1\] that are not under 'ignore'"),
        ({"modality": "CT", "region": "abdomen", "labels": {"1": "liver"}, "ignore": [2],
          "unannotated": {"unicorn": [2]}}, "unannotated: .*'unicorn' is not a known structure"),
        ({"modality": "CT", "region": "abdomen", "labels": {"1": "liver"}, "unannotated": ["aorta"]},
         "'unannotated' must be an object"),
    ],
)
def test_malformed_mappings_are_refused(tmp_path, document, message):
    with pytest.raises(DatasetError, match=message):
        load_mapping(write_mapping(tmp_path, document))


def test_ignored_values_may_be_named_as_anatomy_of_any_context(tmp_path):
    """The heart is no CT-abdomen structure, yet an abdominal CT shows its lower part."""
    path = write_mapping(tmp_path, {"modality": "CT", "region": "abdomen", "labels": {"1": "liver"}, "ignore": [2, 3],
                                    "unannotated": {"heart": [2]}})
    mapping = load_mapping(path)
    assert mapping.unannotated == {"heart": (2,)} and mapping.structures == {"liver": (1,)}


def test_a_missing_mapping_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_mapping(tmp_path / "nope.json")


def test_a_decathlon_dataset_without_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match="needs 'path'"):
        DatasetSpec(kind="decathlon", path="/data/Task03_Liver")


def _four_channel_case(folder: Path) -> None:
    import SimpleITK as sitk

    image, labels = toy_case(0)
    frames = []
    for channel in range(3):
        frame = sitk.GetImageFromArray((image.array + 1000 * channel).astype(np.int16))
        frame.SetSpacing(image.spacing)
        frames.append(frame)
    sitk.WriteImage(sitk.JoinSeries(frames), str(folder / "imagesTr" / "toy_000.nii.gz"))
    label = sitk.GetImageFromArray(labels)
    label.SetSpacing(image.spacing)
    sitk.WriteImage(label, str(folder / "labelsTr" / "toy_000.nii.gz"))


def test_a_4d_image_needs_a_channel_in_the_mapping(toy):
    _four_channel_case(toy)
    with pytest.raises(DatasetError, match="has 3 channels.*set \"channel\""):
        load_decathlon_case(decathlon_case_specs(spec(toy), 0)[0])


def test_the_mapping_channel_picks_one_sequence_of_a_4d_image(toy):
    _four_channel_case(toy)
    mapping = write_mapping(toy, {"modality": "CT", "region": "abdomen", "labels": {"liver": [1, 2], "2": "liver_tumour"},
                                  "channel": 2}, "channel.json")
    image, masks = load_decathlon_case(decathlon_case_specs(spec(toy, mapping), 0)[0])
    expected, _ = toy_case(0)
    assert image.array.shape == expected.array.shape
    np.testing.assert_array_equal(image.array, expected.array + 2000)
    assert masks["liver"].any()


def test_a_channel_that_does_not_exist_is_refused(toy):
    _four_channel_case(toy)
    mapping = write_mapping(toy, {"modality": "CT", "region": "abdomen", "labels": {"liver": [1, 2]}, "channel": 5},
                            "channel.json")
    with pytest.raises(DatasetError, match="channel 5 does not exist"):
        load_decathlon_case(decathlon_case_specs(spec(toy, mapping), 0)[0])


def test_non_integer_labels_are_refused(toy):
    image, labels = toy_case(0)
    write_image(image.with_array(labels.astype(np.float32) * 0.5), toy / "labelsTr" / "toy_000.nii.gz")
    with pytest.raises(DatasetError, match="non-integer"):
        load_decathlon_case(decathlon_case_specs(spec(toy), 0)[0])
