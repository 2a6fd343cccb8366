"""Volumes in and segmentations out, with oblique, flipped, anisotropic geometry kept exactly."""

from __future__ import annotations

import errno
import os
import stat

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from engine_fixtures import (
    ANISOTROPIC_SPACING,
    OBLIQUE_ORIGIN,
    oblique_direction,
    right_handed_oblique_direction,
    sphere_volume,
    write_dicom_series,
)
from DuPLUSLib.errors import InputImageError, OutputPathError, ResourceLimitError
from DuPLUSLib.imageio import (
    SegmentMask,
    VolumeImage,
    atomic_output,
    read_image,
    read_segmentation,
    to_sitk,
    write_image,
    write_segmentation,
)
from DuPLUSLib.ontology import load_ontology

ONTOLOGY = load_ontology()


def assert_same_volume(read: VolumeImage, written: VolumeImage, atol: float = 1e-5) -> None:
    np.testing.assert_array_equal(read.array, written.array)
    np.testing.assert_allclose(read.spacing, written.spacing, atol=atol)
    np.testing.assert_allclose(read.origin, written.origin, atol=atol)
    np.testing.assert_allclose(read.direction, written.direction, atol=atol)


def voxel_centres_lps(image: VolumeImage) -> np.ndarray:
    """LPS position of every voxel, shaped like the array plus a last axis of 3."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in image.array.shape), indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk @ image.ijk_to_lps.T)[..., :3]


# --------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_oblique_flipped_anisotropic_geometry_survives_a_file_round_trip(tmp_path, suffix):
    image, _ = sphere_volume()
    assert np.linalg.det(image.direction) < 0  # the flip makes it left-handed
    path = write_image(image, tmp_path / f"volume{suffix}")
    assert_same_volume(read_image(path), image)


def test_dicom_series_folder_reads_back_with_its_geometry(tmp_path):
    image, _ = sphere_volume(direction=right_handed_oblique_direction())
    write_dicom_series(image, tmp_path, "1.2.826.0.1.3680043.8.498.2001")
    assert_same_volume(read_image(tmp_path), image, atol=1e-4)


def test_dicom_series_of_a_left_handed_volume_keeps_every_voxel_in_place(tmp_path):
    image, _ = sphere_volume()
    write_dicom_series(image, tmp_path, "1.2.826.0.1.3680043.8.498.2002")
    read = read_image(tmp_path)
    # The slice order may be reversed to follow the slice normal, but each value stays where it was.
    assert read.array.shape == image.array.shape
    reversed_k = read.direction[:, 2] @ image.direction[:, 2] < 0
    values = read.array[::-1] if reversed_k else read.array
    positions = voxel_centres_lps(read)[::-1] if reversed_k else voxel_centres_lps(read)
    np.testing.assert_array_equal(values, image.array)
    np.testing.assert_allclose(positions, voxel_centres_lps(image), atol=1e-3)


def test_folder_with_two_dicom_series_is_refused_naming_both(tmp_path):
    image, _ = sphere_volume(shape_ijk=(8, 8, 4), direction=np.eye(3))
    first, second = "1.2.826.0.1.3680043.8.498.3001", "1.2.826.0.1.3680043.8.498.3002"
    write_dicom_series(image, tmp_path, first)
    write_dicom_series(image, tmp_path, second)
    with pytest.raises(InputImageError, match="2 DICOM series") as caught:
        read_image(tmp_path)
    assert first in str(caught.value) and second in str(caught.value)
    assert read_image(tmp_path, series_uid=second).array.shape == image.array.shape
    with pytest.raises(InputImageError, match="no DICOM series '1.2.3'"):
        read_image(tmp_path, series_uid="1.2.3")


def write_slices(folder, positions, row=(1.0, 0.0, 0.0), column=(0.0, 1.0, 0.0), uid="1.2.826.0.1.3680043.8.498.5001"):
    """One 8 x 8 DICOM slice per position (LPS mm), in the plane of ``row`` and ``column``, as a
    scanner writes them: each file says where it lies, nothing says how far apart they are."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, position in enumerate(positions):
        slice_ = sitk.GetImageFromArray(np.full((8, 8), 100 + k, dtype=np.int16))
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1001", "0020|000e": uid, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{c:.10g}" for c in position),
            "0020|0037": "\\".join(f"{c:.10g}" for c in (*row, *column)),
            "0028|0030": "0.8\\0.8",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_)


def test_a_dicom_series_with_a_missing_slice_is_refused_naming_the_gap(tmp_path):
    image, _ = sphere_volume(shape_ijk=(8, 8, 6), direction=np.eye(3))  # slices 2.5 mm apart
    write_dicom_series(image, tmp_path, "1.2.826.0.1.3680043.8.498.4001")
    (tmp_path / "4001_003.dcm").unlink()
    with pytest.raises(InputImageError, match=r"lacks 1 slice between positions \(-12.5, 30.25, -2\) and \(-12.5, 30.25, 3\) mm "
                                              r"\(before '4001_004.dcm'\).*2.5 mm apart.*Copy the series again") as caught:
        read_image(tmp_path)
    assert str(tmp_path) in str(caught.value) and "save it as .nrrd" in str(caught.value)
    uneven = tmp_path / "uneven"
    uneven.mkdir()
    write_slices(uneven, [(0, 0, z) for z in (0.0, 2.0, 4.0, 7.0, 9.0)])
    with pytest.raises(InputImageError, match=r"unevenly spaced: 3 mm apart .*before 'slice_003.dcm'.*others are 2 mm"):
        read_image(uneven)


def test_slice_positions_rounded_as_scanners_write_them_are_read_as_a_regular_grid(tmp_path):
    rng = np.random.default_rng(0)
    write_slices(tmp_path, [(0.0, 0.0, np.round(1.25 * k + rng.uniform(-0.004, 0.004), 3)) for k in range(12)])
    volume = read_image(tmp_path)
    assert volume.array.shape == (12, 8, 8)
    np.testing.assert_allclose(volume.spacing[2], 1.25, atol=0.01)


def test_a_gantry_tilted_or_turning_dicom_series_is_refused_naming_the_tilt(tmp_path):
    """A tilted gantry images planes turned about the left-right axis while the table moves along
    the body's axis: the slices step 15 degrees off their normal."""
    tilt = np.radians(15.0)
    column = (0.0, np.cos(tilt), -np.sin(tilt))
    write_slices(tmp_path, [(0.0, 0.0, 3.0 * k) for k in range(6)], column=column)
    with pytest.raises(InputImageError, match=r"gantry tilt of 15.0 degrees: from 'slice_001.dcm' on.*"
                                              r"load it in 3D Slicer.*save it as .nrrd") as caught:
        read_image(tmp_path)
    assert str(tmp_path) in str(caught.value)
    turning = tmp_path / "turning"
    turning.mkdir()
    write_slices(turning, [(0.0, 0.0, 3.0 * k) for k in range(4)])
    write_slices(turning, [(0.0, 0.0, 12.0)], column=column)  # overwrites slice_000 with a turned plane
    with pytest.raises(InputImageError, match="changes its slice orientation at 'slice_000.dcm'.*not parallel"):
        read_image(turning)


def test_a_single_slice_a_multi_frame_file_and_a_two_slice_series_read_as_before(tmp_path):
    write_slices(tmp_path, [(0.0, 0.0, 0.0)])
    with pytest.raises(InputImageError, match="single slice"):
        read_image(tmp_path)
    frames = tmp_path / "frames"
    frames.mkdir()
    volume = sitk.GetImageFromArray(np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8))
    volume.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(volume, str(frames / "multi.dcm"))  # one file, four frames
    assert read_image(frames).array.shape == (4, 8, 8)
    pair = tmp_path / "pair"
    pair.mkdir()
    write_slices(pair, [(0.0, 0.0, 0.0), (0.0, 0.0, 4.0)])
    assert read_image(pair).spacing[2] == pytest.approx(4.0)


def test_a_volume_larger_than_memory_is_refused_from_its_header_before_any_allocation(tmp_path):
    header = tmp_path / "huge.nhdr"
    header.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 6000 6000 6000\nencoding: raw\n"
                      "endian: little\ndata file: huge.raw\n", encoding="utf-8")
    (tmp_path / "huge.raw").write_bytes(b"")  # never read: the header alone says it cannot fit
    with pytest.raises(ResourceLimitError, match="6000x6000x6000 voxels.*GiB is free"):
        read_image(header)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    with pytest.raises(InputImageError, match="no DICOM series"):
        read_image(tmp_path)


def test_single_frame_4d_image_is_read_as_its_3d_frame(tmp_path):
    image, _ = sphere_volume(shape_ijk=(8, 6, 4), direction=np.eye(3))
    four_d = sitk.JoinSeries([to_sitk(image)])
    sitk.WriteImage(four_d, str(tmp_path / "one_frame.nrrd"))
    np.testing.assert_array_equal(read_image(tmp_path / "one_frame.nrrd").array, image.array)


def test_2d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.int16).reshape(8, 8)), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputImageError, match="2D"):
        read_image(tmp_path / "flat.nrrd")


def test_single_slice_volume_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.int16).reshape(1, 8, 8)), str(tmp_path / "slice.nrrd"))
    with pytest.raises(InputImageError, match="single slice"):
        read_image(tmp_path / "slice.nrrd")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_4d_image_with_several_frames_is_refused(tmp_path, suffix):
    image, _ = sphere_volume(shape_ijk=(8, 6, 4), direction=np.eye(3))
    frames = sitk.JoinSeries([to_sitk(image), to_sitk(image), to_sitk(image)])
    sitk.WriteImage(frames, str(tmp_path / f"frames{suffix}"))
    with pytest.raises(InputImageError, match="4D|components"):
        read_image(tmp_path / f"frames{suffix}")


def test_rgb_volume_is_refused(tmp_path):
    channel = sitk.GetImageFromArray(np.zeros((4, 6, 8), dtype=np.uint8))
    sitk.WriteImage(sitk.Compose(channel, channel, channel), str(tmp_path / "colour.nrrd"))
    with pytest.raises(InputImageError, match="3 components"):
        read_image(tmp_path / "colour.nrrd")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputImageError, match="does not exist"):
        read_image(tmp_path / "nowhere.nrrd")


@pytest.mark.parametrize("name", ["noise.nrrd", "noise.nii.gz", "noise"])
def test_random_bytes_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputImageError, match="cannot read"):
        read_image(tmp_path / name)


def test_truncated_nrrd_is_refused(tmp_path):
    image, _ = sphere_volume(shape_ijk=(16, 16, 8), direction=np.eye(3))
    sitk.WriteImage(to_sitk(image), str(tmp_path / "whole.nrrd"), useCompression=False)
    data = (tmp_path / "whole.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError):
        read_image(tmp_path / "cut.nrrd")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_a_cut_short_file_is_refused_as_an_interrupted_copy(tmp_path, suffix):
    """ITK's NIfTI reader fills what a cut file lacks with zeros; the whole file reads unchanged."""
    image, _ = sphere_volume(shape_ijk=(24, 20, 16), direction=np.eye(3))
    image = image.with_array((np.random.default_rng(0).random(image.array.shape) * 1000).astype(np.int16))
    whole = write_image(image, tmp_path / f"whole{suffix}")
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(InputImageError, match=r"'.*cut.*' is shorter than its header says .*"
                                              r"an interrupted copy or download\? Copy it again"):
        read_image(cut)
    assert_same_volume(read_image(whole), image)


def test_a_gzip_nifti_in_several_members_is_counted_in_full(tmp_path):
    """A file whose gzip trailer does not give its length (bgzip and some tools write several
    members) is decompressed and counted: whole, it reads; cut inside a member, it is refused."""
    import gzip

    image, _ = sphere_volume(shape_ijk=(24, 20, 16), direction=np.eye(3))
    plain = write_image(image, tmp_path / "plain.nii").read_bytes()
    middle = len(plain) // 2
    members = gzip.compress(plain[:middle], mtime=0) + gzip.compress(plain[middle:], mtime=0)
    (tmp_path / "members.nii.gz").write_bytes(members)
    assert_same_volume(read_image(tmp_path / "members.nii.gz"), image)
    (tmp_path / "cut.nii.gz").write_bytes(members[:-40])
    with pytest.raises(InputImageError, match="shorter than its header says"):
        read_image(tmp_path / "cut.nii.gz")


# --------------------------------------------------------------------------- .seg.nrrd out
@pytest.fixture
def organ_and_tumour():
    """A liver sphere with a tumour sphere inside it: the masks overlap."""
    image, organ = sphere_volume(radius_mm=8.0)
    _, tumour = sphere_volume(radius_mm=3.5)
    assert tumour.any() and (organ & tumour).sum() == tumour.sum()
    segments = [
        SegmentMask(ONTOLOGY.structures["liver"], organ, confidence=0.91),
        SegmentMask(ONTOLOGY.structures["liver_tumour"], tumour, confidence=0.62),
    ]
    return image, segments


def test_overlapping_segments_are_kept_as_layers_for_slicerio(tmp_path, organ_and_tumour):
    image, segments = organ_and_tumour
    path = write_segmentation(segments, image, tmp_path / "result.seg.nrrd")
    read = slicerio.read_segmentation(str(path))
    assert read["voxels"].ndim == 4 and read["voxels"].shape[0] == 2
    assert [s["layer"] for s in read["segments"]] == [0, 1]
    for written, segment in zip(segments, read["segments"]):
        mask = read["voxels"][segment["layer"]] == segment["labelValue"]  # [i, j, k], as nrrd stores it
        np.testing.assert_array_equal(np.transpose(mask, (2, 1, 0)), written.mask)


def test_segments_carry_name_colour_and_terminology(tmp_path, organ_and_tumour):
    image, segments = organ_and_tumour
    path = write_segmentation(segments, image, tmp_path / "result.seg.nrrd")
    read = slicerio.read_segmentation(str(path))
    tumour = ONTOLOGY.structures["liver_tumour"]
    entry = read["segments"][1]
    assert [s["name"] for s in read["segments"]] == ["liver", "liver tumour"]
    np.testing.assert_allclose(entry["color"], tumour.color_float, atol=1e-5)
    assert entry["terminology"]["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert entry["terminology"]["type"] == ["SCT", "108369006", "Neoplasm"]
    assert entry["terminology"]["anatomicRegion"] == ["SCT", "10200004", "Liver"]
    assert entry["tags"]["DuPLUS.Structure"] == "liver_tumour"


def test_terminology_entry_strings_in_the_header_are_slicers(tmp_path, organ_and_tumour):
    image, segments = organ_and_tumour
    header = nrrd.read_header(str(write_segmentation(segments, image, tmp_path / "result.seg.nrrd")))
    for index, segment in enumerate(segments):
        tags = dict(tag.split(":", 1) for tag in header[f"Segment{index}_Tags"].split("|") if tag)
        assert tags["TerminologyEntry"] == segment.structure.terminology.as_slicer_tag()


def test_segmentation_geometry_is_the_reference_images(tmp_path, organ_and_tumour):
    image, segments = organ_and_tumour
    read = slicerio.read_segmentation(str(write_segmentation(segments, image, tmp_path / "result.seg.nrrd")))
    np.testing.assert_allclose(read["ijkToLPS"], image.ijk_to_lps, atol=1e-6)


def test_read_segmentation_returns_each_structures_mask_on_the_reference_grid(tmp_path, organ_and_tumour):
    image, segments = organ_and_tumour
    geometry, masks = read_segmentation(write_segmentation(segments, image, tmp_path / "r.seg.nrrd"), ONTOLOGY)
    assert geometry.same_geometry(image, tolerance=1e-6)
    assert set(masks) == {"liver", "liver_tumour"}
    for segment in segments:
        np.testing.assert_array_equal(masks[segment.structure.key], segment.mask)


def test_non_overlapping_segmentation_reads_in_simpleitk_with_the_input_geometry(tmp_path):
    image, left = sphere_volume(radius_mm=4.0, centre_ijk=(6, 10, 6))
    _, right = sphere_volume(radius_mm=4.0, centre_ijk=(18, 10, 6))
    assert left.any() and right.any() and not (left & right).any()
    segments = [SegmentMask(ONTOLOGY.structures["kidney_left"], left), SegmentMask(ONTOLOGY.structures["kidney_right"], right)]
    read = sitk.ReadImage(str(write_segmentation(segments, image, tmp_path / "kidneys.seg.nrrd")))
    assert read.GetDimension() == 3
    np.testing.assert_allclose(read.GetSpacing(), ANISOTROPIC_SPACING, atol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), OBLIQUE_ORIGIN, atol=1e-6)
    np.testing.assert_allclose(np.reshape(read.GetDirection(), (3, 3)), oblique_direction(), atol=1e-6)
    labels = sitk.GetArrayFromImage(read)
    np.testing.assert_array_equal(labels == 1, left)
    np.testing.assert_array_equal(labels == 2, right)


def test_empty_mask_is_kept_as_an_empty_segment(tmp_path):
    image, organ = sphere_volume()
    segments = [SegmentMask(ONTOLOGY.structures["liver"], organ),
                SegmentMask(ONTOLOGY.structures["liver_tumour"], np.zeros_like(organ))]
    _, masks = read_segmentation(write_segmentation(segments, image, tmp_path / "r.seg.nrrd"), ONTOLOGY)
    assert set(masks) == {"liver", "liver_tumour"} and not masks["liver_tumour"].any()


def test_mask_of_another_shape_is_refused_before_anything_is_written(tmp_path):
    image, organ = sphere_volume()
    with pytest.raises(ValueError, match="shape"):
        write_segmentation([SegmentMask(ONTOLOGY.structures["liver"], organ[:-1])], image, tmp_path / "r.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------- output safety
def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.seg.nrrd"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_renames_into_place_with_ordinary_permissions(tmp_path):
    target = tmp_path / "out.json"
    with atomic_output(target) as temporary:
        assert temporary != target and temporary.parent == tmp_path
        temporary.write_text("{}", encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_existing_output_without_overwrite_is_refused_and_kept(tmp_path):
    image, _ = sphere_volume()
    target = tmp_path / "volume.nrrd"
    target.write_text("keep me", encoding="utf-8")
    with pytest.raises(OutputPathError, match="already exists"):
        write_image(image, target, overwrite=False)
    assert target.read_text(encoding="utf-8") == "keep me"


def test_existing_output_with_overwrite_is_replaced(tmp_path):
    image, _ = sphere_volume()
    target = tmp_path / "volume.nrrd"
    target.write_text("old", encoding="utf-8")
    write_image(image, target, overwrite=True)
    assert_same_volume(read_image(target), image)


def test_a_full_disk_during_the_write_gives_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch):
    image, organ = sphere_volume()
    target = tmp_path / "result.seg.nrrd"

    def write_until_the_disk_is_full(path, segmentation, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"NRRD0004\n half a header")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(slicerio, "write_segmentation", write_until_the_disk_is_full)
    with pytest.raises(OutputPathError, match="no space left.*nothing was written"):
        write_segmentation([SegmentMask(ONTOLOGY.structures["liver"], organ)], image, target)
    assert list(tmp_path.iterdir()) == []


def test_of_two_runs_on_one_output_without_overwrite_the_later_is_refused(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(OutputPathError, match="another run meanwhile"):
        with atomic_output(target, overwrite=False) as temporary:
            temporary.write_text("second run", encoding="utf-8")
            target.write_text("first run", encoding="utf-8")  # the other run finishes first
    assert target.read_text(encoding="utf-8") == "first run"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_output_into_a_missing_folder_is_refused(tmp_path):
    image, organ = sphere_volume()
    with pytest.raises(OutputPathError, match="does not exist"):
        write_segmentation([SegmentMask(ONTOLOGY.structures["liver"], organ)], image, tmp_path / "no" / "r.seg.nrrd")


def test_output_into_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running with rights that ignore folder permissions (root)")
        image, _ = sphere_volume()
        with pytest.raises(OutputPathError, match="not writable"):
            write_image(image, folder / "volume.nrrd")
    finally:
        folder.chmod(0o755)
