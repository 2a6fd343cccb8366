"""Generated bad input for the EHR validator, the cohort reader and the image readers.

Each target must either accept its input or refuse it with the project's own error class and a
message; any other exception, a hang (hypothesis' deadline) or a crash of the interpreter fails.
The prompt parser has its own generated cases in ``test_ontology.py``. Together they run more
than 1,000 cases in well under a minute.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from DuPLUSLib.errors import InputImageError
from DuPLUSLib.imageio import VolumeImage, read_image, read_segmentation, write_image
from DuPLUSLib.ontology import load_ontology
from DuPLUSLib.prognosis.cohort import CohortError, load_cohort
from DuPLUSLib.prognosis.ehr import EHR_FIELDS, EHRRecord, EHRValidationError, ehr_sentence, parse_ehr

ONTOLOGY = load_ontology()
FUZZ = settings(deadline=5000, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------------------ EHR
plausible_text = st.sampled_from([
    "63", "sixty", "M", "female", "x", "oropharynx", "Larynx", "T2", "t4a", "N2c", "M0", "IVA", "4b",
    "positive", "p16+", "NEG", "current smoker", "ex", "CRT", "surgery+radiotherapy", "", "NA", "?", "-1", "1e9",
])
cell = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    plausible_text, st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
field_name = st.one_of(st.sampled_from(EHR_FIELDS), st.text(min_size=1, max_size=10))


@settings(FUZZ, max_examples=400)
@given(values=st.dictionaries(field_name, cell, max_size=len(EHR_FIELDS) + 2))
def test_any_ehr_mapping_is_either_a_valid_record_or_a_named_validation_error(values):
    try:
        record = parse_ehr(values)
    except EHRValidationError as error:
        assert str(error).strip()
        return
    assert isinstance(record, EHRRecord)
    assert record.age is not None and math.isfinite(record.age)
    assert ehr_sentence(record).strip()


@settings(FUZZ, max_examples=100)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))),
       binary=st.booleans())
def test_any_cohort_file_is_read_or_refused_with_a_cohort_error(tmp_path_factory, text, binary):
    path = tmp_path_factory.mktemp("cohort") / "cohort.csv"
    if binary:
        path.write_bytes(text.encode("utf-16"))  # not UTF-8: a decoding failure
    else:
        path.write_text("time,event,age\n" + text, encoding="utf-8")
    try:
        cohort = load_cohort(path, "time", "event")
    except CohortError as error:
        assert str(error).strip()
        return
    assert len(cohort.time) == len(cohort.event) > 0
    assert np.isfinite(cohort.time).all()


# ---------------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    """Small valid volumes in every format the reader takes, as bytes to corrupt."""
    folder = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    image = VolumeImage(rng.normal(0, 100, (6, 7, 8)).astype(np.int16), (0.8, 0.9, 3.0), (1.0, -2.0, 3.0), np.eye(3))
    files = {}
    for suffix in (".nrrd", ".nii", ".nii.gz", ".mha"):
        path = write_image(image, folder / f"volume{suffix}")
        files[suffix] = path.read_bytes()
    return files


def _corrupt(data: bytes, cuts: list[tuple[int, int]], truncate: float | None) -> bytes:
    corrupted = bytearray(data)
    for position, value in cuts:
        corrupted[position % len(corrupted)] = value
    if truncate is not None:
        corrupted = corrupted[: int(len(corrupted) * truncate)]
    return bytes(corrupted)


def _header_biased_positions():
    # Most damage goes where parsers look first: the header (the first few hundred bytes).
    return st.one_of(st.integers(0, 400), st.integers(0, 10**6))


@settings(FUZZ, max_examples=360)
@given(suffix=st.sampled_from([".nrrd", ".nii", ".nii.gz", ".mha"]),
       cuts=st.lists(st.tuples(_header_biased_positions(), st.integers(0, 255)), max_size=6),
       truncate=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_a_corrupted_or_truncated_image_is_read_or_refused_with_an_input_image_error(
    tmp_path_factory, valid_files, suffix, cuts, truncate
):
    path = tmp_path_factory.mktemp("fuzz") / f"case{suffix}"
    path.write_bytes(_corrupt(valid_files[suffix], cuts, truncate))
    try:
        image = read_image(path)
    except InputImageError as error:
        assert str(error).strip()
        return
    assert image.array.ndim == 3 and min(image.array.shape) >= 2


@settings(FUZZ, max_examples=100)
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".nrrd", ".nii", ".nii.gz", ".mha", ".dcm"]))
def test_random_bytes_with_an_image_suffix_are_refused_with_an_input_image_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("noise") / f"noise{suffix}"
    path.write_bytes(data)
    with pytest.raises(InputImageError):
        read_image(path)


@settings(FUZZ, max_examples=100)
@given(cuts=st.lists(st.tuples(_header_biased_positions(), st.integers(0, 255)), max_size=6),
       truncate=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_a_corrupted_segmentation_file_is_read_or_refused_with_an_input_image_error(
    tmp_path_factory, sample_segmentation_bytes, cuts, truncate
):
    path = tmp_path_factory.mktemp("segfuzz") / "case.seg.nrrd"
    path.write_bytes(_corrupt(sample_segmentation_bytes, cuts, truncate))
    try:
        reference, masks = read_segmentation(path, ONTOLOGY)
    except InputImageError as error:
        assert str(error).strip()
        return
    for mask in masks.values():
        assert mask.shape == reference.array.shape


@pytest.fixture(scope="module")
def sample_segmentation_bytes(tmp_path_factory) -> bytes:
    from DuPLUSLib.imageio import write_segmentation

    folder = tmp_path_factory.mktemp("seg")
    reference = VolumeImage(np.zeros((6, 7, 8), np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    liver = np.zeros((6, 7, 8), bool)
    liver[1:4, 2:5, 2:6] = True
    spleen = np.zeros((6, 7, 8), bool)
    spleen[2:5, 1:3, 5:7] = True
    path = write_segmentation(_masks(liver=liver, spleen=spleen), reference, folder / "truth.seg.nrrd")
    return Path(path).read_bytes()


def _masks(**arrays):
    from DuPLUSLib.imageio import SegmentMask
    return [SegmentMask(ONTOLOGY.structures[key], mask) for key, mask in arrays.items()]
