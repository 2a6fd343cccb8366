"""Output formats read back by other tools (nibabel, pydicom, highdicom), in the input's exact geometry.

The DICOM cases use the real RIDER Lung CT crop in ``Testing/Data/rider_lung_crop`` (see its README)
and a series written here whose rows run opposite to its NIfTI conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from engine_fixtures import one_thread, save_bright_region_bundle, sphere_volume, write_dicom_series  # noqa: F401
from DuPLUSLib.cli import main
from DuPLUSLib.dicom_references import read_dicom_seg
from DuPLUSLib.formats import read_label_table, write_segments
from DuPLUSLib.imageio import SegmentMask, VolumeImage, mask_box, read_image, read_segmentation, write_image
from DuPLUSLib.ontology import load_ontology

highdicom = pytest.importorskip("highdicom")
pytestmark = pytest.mark.usefixtures("one_thread")
ONTOLOGY = load_ontology()
RIDER = Path(__file__).resolve().parents[1] / "Data" / "rider_lung_crop"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


pytestmark = pytest.mark.usefixtures("keep_signal_handlers")  # duplus segment runs in-process here


@pytest.fixture(scope="module")
def rider() -> VolumeImage:
    return read_image(RIDER / "ct")


def rider_segments(image: VolumeImage) -> list[SegmentMask]:
    """Two overlapping masks on the real CT: lung parenchyma and the soft tissue inside it (tumour)."""
    lung = image.array < -400
    tumour = np.zeros_like(lung)
    tumour[8:18, 40:90, 40:120] = image.array[8:18, 40:90, 40:120] > -100
    return [SegmentMask(ONTOLOGY.structures["lung_right"], lung, 0.91),
            SegmentMask(ONTOLOGY.structures["lung_tumour"], tumour, 0.77),
            SegmentMask(ONTOLOGY.structures["heart"], np.zeros_like(lung), None)]


def ras_affine(image: VolumeImage) -> np.ndarray:
    return LPS_TO_RAS @ image.ijk_to_lps


# ------------------------------------------------------------------------------------ NIfTI
def test_nifti_is_one_label_file_and_a_label_table_in_the_input_geometry(rider, tmp_path):
    segments = rider_segments(rider)
    written = write_segments(segments, rider, tmp_path / "case.nii.gz", "nifti")
    assert [p.name for p in written] == ["case.nii.gz", "case.labels.json"]
    loaded = nib.load(str(tmp_path / "case.nii.gz"))
    np.testing.assert_allclose(loaded.affine, ras_affine(rider), atol=1e-4)
    labels = np.asarray(loaded.dataobj).transpose(2, 1, 0)  # nibabel is [i, j, k]
    assert labels.dtype == np.uint8
    table = read_label_table(tmp_path / "case.nii.gz")
    assert {v: e["structure"] for v, e in table.items()} == {1: "lung_right", 2: "lung_tumour", 3: "heart"}
    assert table[2]["terminology"] == ONTOLOGY.structures["lung_tumour"].terminology.as_slicer_tag()
    np.testing.assert_array_equal(labels == 2, segments[1].mask)  # the later structure wins where they overlap
    np.testing.assert_array_equal(labels == 1, segments[0].mask & ~segments[1].mask)


def test_nifti_split_writes_one_whole_file_per_structure(rider, tmp_path):
    segments = rider_segments(rider)
    written = write_segments(segments, rider, tmp_path / "case.nii.gz", "nifti", split=True)
    assert sorted(p.name for p in written) == ["heart.nii.gz", "lung_right.nii.gz", "lung_tumour.nii.gz"]
    assert all(p.parent == tmp_path / "case" for p in written)
    for segment in segments:
        loaded = nib.load(str(tmp_path / "case" / f"{segment.structure.key}.nii.gz"))
        np.testing.assert_allclose(loaded.affine, ras_affine(rider), atol=1e-4)
        np.testing.assert_array_equal(np.asarray(loaded.dataobj).transpose(2, 1, 0) == 1, segment.mask)


# ------------------------------------------------------------------------------------ DICOM SEG
def test_dicom_seg_references_the_real_series_and_carries_snomed_codes(rider, tmp_path):
    segments = rider_segments(rider)
    path = write_segments(segments, rider, tmp_path / "case.dcm", "dicom-seg")[0]
    document = pydicom.dcmread(path)
    source = pydicom.dcmread(rider.dicom_files[0], stop_before_pixels=True)
    assert document.Modality == "SEG" and document.SegmentationType == "BINARY"
    assert document.StudyInstanceUID == source.StudyInstanceUID
    assert document.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert document.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in document.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in rider.dicom_files}

    seg = highdicom.seg.segread(str(path))
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] == [
        "right lung", "lung tumour", "heart"]
    tumour = seg.get_segment_description(2)
    assert (tumour.segmented_property_category.value, tumour.segmented_property_category.scheme_designator) == ("49755003", "SCT")
    assert (tumour.segmented_property_type.value, tumour.segmented_property_type.meaning) == ("86049000", "Neoplasm, Primary")
    assert tumour.anatomic_regions[0].value == "39607008"  # lung
    assert tumour.algorithm_type.value == "AUTOMATIC"
    assert tumour.algorithm_identification[0].AlgorithmName == "DuPLUS"
    assert tumour.TrackingID == "lung_tumour"
    assert list(tumour.RecommendedDisplayCIELabValue) == list(highdicom.color.CIELabColor.from_rgb(255, 85, 0).value)

    back = read_dicom_seg(path, rider)
    for segment, read in zip(segments, back):
        np.testing.assert_array_equal(read.mask, segment.mask)


@pytest.mark.parametrize("arrangement", ["apart", "apart, last empty"])
def test_segments_that_do_not_overlap_read_back_the_same_as_stacked_ones(rider, tmp_path, arrangement):
    """Non-overlapping segments go to highdicom as one label map (a tenth of the memory for ten
    structures); the file must hold the same segments and masks as the stacked layers give."""
    lung = rider.array < -400
    body = (rider.array > -200) & ~lung
    segments = [SegmentMask(ONTOLOGY.structures["lung_right"], lung, 0.9),
                SegmentMask(ONTOLOGY.structures["heart"], body, 0.8)]
    if arrangement == "apart, last empty":
        segments.append(SegmentMask(ONTOLOGY.structures["lung_tumour"], np.zeros_like(lung), None))
    from DuPLUSLib.formats import _segment_pixels

    packed = _segment_pixels(segments, rider.array.shape)
    assert packed.ndim == (3 if arrangement == "apart" else 4)
    back = read_dicom_seg(write_segments(segments, rider, tmp_path / "case.dcm", "dicom-seg")[0], rider)
    assert [s.label for s in back] == [s.structure.name for s in segments]
    for segment, read in zip(segments, back):
        np.testing.assert_array_equal(read.mask, segment.mask)


@pytest.mark.parametrize("format, name", [("seg.nrrd", "case.seg.nrrd"), ("nifti", "case.nii.gz"),
                                          ("nifti-split", "case.nii.gz"), ("dicom-seg", "case.dcm")])
def test_segments_kept_in_their_boxes_write_the_same_files_as_whole_masks(rider, tmp_path, format, name):
    """The engine hands writers masks cut to their boxes (an empty one with an empty box); every
    format must read back exactly what the whole-grid masks give, in the input's geometry."""
    whole = rider_segments(rider)
    boxed = []
    for segment in whole:
        box = mask_box(segment.mask) or (slice(0, 0),) * 3
        boxed.append(SegmentMask(segment.structure, segment.mask[box].copy(), segment.confidence, box,
                                 rider.array.shape))
    assert boxed[0].values.size < rider.array.size and boxed[2].values.size == 0
    split = format == "nifti-split"
    kind = "nifti" if split else format
    outputs = {}
    for label, segments in (("whole", whole), ("boxed", boxed)):
        folder = tmp_path / label
        folder.mkdir()
        outputs[label] = write_segments(segments, rider, folder / name, kind, split=split)
    for written_whole, written_boxed in zip(outputs["whole"], outputs["boxed"]):
        if kind == "dicom-seg":
            for a, b in zip(read_dicom_seg(written_whole, rider), read_dicom_seg(written_boxed, rider)):
                np.testing.assert_array_equal(a.mask, b.mask)
        elif kind == "seg.nrrd":
            (geometry_a, masks_a), (geometry_b, masks_b) = (read_segmentation(p, ONTOLOGY) for p in (written_whole, written_boxed))
            assert geometry_a.same_geometry(geometry_b) and masks_a.keys() == masks_b.keys()
            for key in masks_a:
                np.testing.assert_array_equal(masks_a[key], masks_b[key])
        elif written_whole.name.endswith(".json"):
            assert read_label_table(written_whole.with_name("case.nii.gz")) == read_label_table(written_boxed.with_name("case.nii.gz"))
        else:
            a, b = nib.load(str(written_whole)), nib.load(str(written_boxed))
            np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            np.testing.assert_allclose(a.affine, b.affine)


def test_a_type_modifier_is_written_inside_the_type_code(rider, tmp_path):
    tumour = rider_segments(rider)[1].mask
    path = write_segments([SegmentMask(ONTOLOGY.structures["gtvp"], tumour)], rider, tmp_path / "gtvp.dcm", "dicom-seg")[0]
    description = highdicom.seg.segread(str(path)).get_segment_description(1)
    assert description.segmented_property_type.value == "108369006"
    assert description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "63161005"


def test_segment_writes_a_dicom_seg_for_the_real_series_from_the_command_line(rider, tmp_path):
    """The format follows the output's ending when --format is not given."""
    model = save_bright_region_bundle(tmp_path / "model", patch_size=(32, 32, 32), spacing=(4.0, 4.0, 4.0))
    output = tmp_path / "rider.dcm"
    assert main(["segment", str(RIDER / "ct"), "-p", "CT/thorax/heart", "-o", str(output), "--model", str(model),
                 "--device", "cpu", "--progress", "none"]) == 0
    back = read_dicom_seg(output, rider)
    assert [s.label for s in back] == ["heart"]
    assert back[0].mask.shape == rider.array.shape


# ------------------------------------------------------------------------------------ geometry
def flipped_rows_series(tmp_path: Path) -> tuple[Path, Path, VolumeImage, VolumeImage]:
    """A DICOM series whose rows run from posterior to anterior (and slices head to feet), and its
    NIfTI conversion on axis-aligned voxels: the same image, its rows and slices stored in reverse."""
    dicom_image, _ = sphere_volume(shape_ijk=(40, 36, 18), spacing=(1.5, 1.5, 2.0), origin=(-30.0, 25.0, 40.0),
                                   direction=np.diag([1.0, -1.0, -1.0]), centre_ijk=(14.0, 10.0, 6.0),
                                   radius_mm=9.0, foreground=900.0, background=0.0, noise=5.0)
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_dicom_series(dicom_image, folder, "1.2.826.0.1.3680043.8.498.7001")
    dicom_image = read_image(folder)
    shape_i, shape_j, shape_k = dicom_image.shape_ijk
    corner = dicom_image.ijk_to_lps @ np.array([0, shape_j - 1, shape_k - 1, 1.0])
    converted = VolumeImage(dicom_image.array[::-1, ::-1, :].copy(), dicom_image.spacing, tuple(corner[:3]), np.eye(3))
    nifti = write_image(converted, tmp_path / "converted.nii.gz")
    return folder, nifti, dicom_image, read_image(nifti)


@pytest.mark.parametrize("format", ["seg.nrrd", "nifti", "dicom-seg"])
def test_outputs_keep_the_input_geometry_when_rows_run_opposite_to_the_nifti_conversion(tmp_path, format):
    folder, nifti, dicom_image, nifti_image = flipped_rows_series(tmp_path)
    assert not np.allclose(dicom_image.direction, nifti_image.direction)
    model = save_bright_region_bundle(tmp_path / "model")
    suffix = {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "dicom-seg": ".dcm"}[format]
    masks = {}
    for name, source, image in (("dicom", folder, dicom_image), ("nifti", nifti, nifti_image)):
        if format == "dicom-seg" and name == "nifti":
            continue
        output = tmp_path / f"{name}{suffix}"
        assert main(["segment", str(source), "-p", "CT/abdomen/liver", "-o", str(output), "--model", str(model),
                     "--device", "cpu", "--progress", "none", "--format", format]) == 0
        masks[name] = read_back(output, format, image)
    assert masks["dicom"].sum() > 50
    if "nifti" in masks:  # the same voxels in patient space, stored in opposite row and slice order
        np.testing.assert_array_equal(masks["dicom"][::-1, ::-1, :], masks["nifti"])


def read_back(path: Path, format: str, image: VolumeImage) -> np.ndarray:
    """The written mask, after checking that the file's own geometry is exactly the input's."""
    if format == "seg.nrrd":
        geometry, masks = read_segmentation(path, ONTOLOGY)
        assert geometry.same_geometry(image, tolerance=1e-5)
        return masks["liver"]
    if format == "nifti":
        loaded = nib.load(str(path))
        np.testing.assert_allclose(loaded.affine, ras_affine(image), atol=1e-4)
        assert json.loads(path.with_name(path.name.replace(".nii.gz", ".labels.json")).read_text())["labels"]["1"]["structure"] == "liver"
        return np.asarray(loaded.dataobj).transpose(2, 1, 0) == 1
    seg = highdicom.seg.segread(str(path))
    positions = {tuple(np.round(np.array(f.PlanePositionSequence[0].ImagePositionPatient, float), 3))
                 for f in seg.PerFrameFunctionalGroupsSequence}
    slices = {tuple(np.round((image.ijk_to_lps @ np.array([0, 0, k, 1.0]))[:3], 3)) for k in range(image.array.shape[0])}
    assert positions <= slices  # every frame lies on a source slice
    orientation = np.array(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    np.testing.assert_allclose(orientation, np.r_[image.direction[:, 0], image.direction[:, 1]], atol=1e-6)
    return read_dicom_seg(path, image)[0].mask
