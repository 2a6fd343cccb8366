"""Public dataset layouts: each reader on a tiny fixture in its layout, built here, and every refusal.

Each fixture is written on the fly (NIfTI with SimpleITK, DICOM with pydicom, PNG with Pillow), a
few voxels large, in the folder structure the dataset ships in. A conversion is checked by reading
its output back through the Decathlon reader that ``duplus train`` uses, so a mapping file that
does not fit its labels fails here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DuPLUSLib.datasets.layouts import LAYOUTS, ConvertOptions, LayoutError, convert_dataset
from DuPLUSLib.datasets.layouts.msd import MAPPINGS, TASKS, mapping_files
from DuPLUSLib.training.decathlon import DatasetError, iter_decathlon_cases, load_mapping

REPOSITORY = Path(__file__).resolve().parents[2]
TS_EXAMPLE = Path("/tmp/dl/totalsegmentator-2.18.0/tests/reference_files")


# ------------------------------------------------------------------------------------- helpers
def nifti(path: Path, array: np.ndarray, spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0)) -> Path:
    """Write ``array`` [k, j, i] as NIfTI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path), True)
    return path


SHAPE = (6, 8, 10)  # k, j, i


def blob(k0, k1, j0, j1, i0, i1, value=1, shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    array = np.zeros(shape, dtype=dtype)
    array[k0:k1, j0:j1, i0:i1] = value
    return array


def ct(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(40, 10, shape)).astype(np.int16)


def read_back(part: Path, mapping: str):
    """Every case of a converted part through the Decathlon reader: [(name, masks)]."""
    return [(entry.name, masks) for entry, _, _, masks in iter_decathlon_cases(part, part / mapping)]


def convert(layout: str, source: Path, tmp_path: Path, **options):
    output = tmp_path / f"out-{layout}"
    report = convert_dataset(layout, source, output, ConvertOptions(**options))
    return output, report


def assert_nothing_left(tmp_path: Path, layout: str) -> None:
    assert not (tmp_path / f"out-{layout}").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".out-{layout}")]


def refused(layout: str, source: Path, tmp_path: Path, match: str, **options) -> LayoutError:
    with pytest.raises(LayoutError, match=match) as error:
        convert(layout, source, tmp_path, **options)
    assert_nothing_left(tmp_path, layout)
    return error.value


# ----------------------------------------------------------------------------- TotalSegmentator
def totalsegmentator_fixture(root: Path) -> Path:
    for number, split in ((0, "train"), (1, "val"), (2, "test")):
        case = root / f"s{number:04d}"
        nifti(case / "ct.nii.gz", ct(number))
        nifti(case / "segmentations" / "liver.nii.gz", blob(1, 4, 1, 5, 1, 5))
        nifti(case / "segmentations" / "spleen.nii.gz", blob(1, 3, 5, 7, 6, 9))
        nifti(case / "segmentations" / "urinary_bladder.nii.gz", blob(4, 6, 2, 4, 2, 4))
        nifti(case / "segmentations" / "sternum.nii.gz", blob(0, 1, 0, 1, 0, 1))  # not in the ontology
        nifti(case / "segmentations" / "heart_atrium_left.nii.gz", blob(5, 6, 6, 8, 7, 9))  # a version 1 name
    (root / "meta.csv").write_text("image_id;age;gender;split\ns0000;50;m;train\ns0001;60;f;val\ns0002;70;m;test\n")
    return root


def test_totalsegmentator_merges_one_file_per_structure_into_the_total_numbering(tmp_path):
    output, report = convert("totalsegmentator", totalsegmentator_fixture(tmp_path / "ts"), tmp_path)
    part = output / "ct"
    assert report.parts["ct"]["cases"] == 1  # the default split is train: s0001 (val) and s0002 (test) stay out
    assert set(report.parts["ct"]["mappings"]) >= {"mapping_ct_abdomen.json", "mapping_ct_pelvis.json", "mapping_ct_thorax.json"}
    assert report.parts["ct"]["label_values"] == [0, 1, 5, 21, 51, 116]  # spleen, liver, bladder, heart, sternum
    [(name, masks)] = read_back(part, "mapping_ct_abdomen.json")
    assert name == "s0000"
    assert masks["liver"].sum() == 3 * 4 * 4 and masks["spleen"].sum() == 2 * 2 * 3
    assert "bladder" not in masks  # a pelvis structure, annotated in the pelvis mapping
    [(_, pelvis)] = read_back(part, "mapping_ct_pelvis.json")
    assert pelvis["bladder"].sum() == 2 * 2 * 2
    [(_, thorax)] = read_back(part, "mapping_ct_thorax.json")
    assert thorax["heart"].sum() == 4  # version 1's left atrium counts as the heart
    both, _ = convert("totalsegmentator", tmp_path / "ts", tmp_path / "b", splits=("train", "val"))
    assert json.loads((both / "ct" / "dataset.json").read_text())["numTraining"] == 2
    assert json.loads((both / "conversion.json").read_text())["layout"] == "totalsegmentator"


def test_totalsegmentator_refuses_an_unknown_structure_file_and_a_missing_meta_csv(tmp_path):
    source = totalsegmentator_fixture(tmp_path / "ts")
    nifti(source / "s0000" / "segmentations" / "livr.nii.gz", blob(0, 1, 0, 1, 0, 1))
    error = refused("totalsegmentator", source, tmp_path, "livr.nii.gz")
    assert "class_map['total']" in str(error) and isinstance(error, DatasetError)
    (source / "s0000" / "segmentations" / "livr.nii.gz").unlink()
    (source / "meta.csv").unlink()
    refused("totalsegmentator", source, tmp_path, "meta.csv.*--splits all")
    output, report = convert("totalsegmentator", source, tmp_path, splits=("all",))
    assert report.parts["ct"]["cases"] == 3
    refused("totalsegmentator", tmp_path / "out-totalsegmentator" / "ct", tmp_path / "x", "no case folder")


def test_the_totalsegmentator_mri_dataset_becomes_an_mr_part_numbered_as_total_mr(tmp_path):
    for number, image in ((0, "ct.nii.gz"), (1, "mri.nii.gz")):
        case = tmp_path / "ts" / f"s{number:04d}"
        nifti(case / image, ct(number))
        nifti(case / "segmentations" / "liver.nii.gz", blob(1, 4, 1, 5, 1, 5))
        nifti(case / "segmentations" / "vertebrae.nii.gz" if number else case / "segmentations" / "vertebrae_L1.nii.gz",
              blob(4, 6, 6, 8, 6, 8))
    output, report = convert("totalsegmentator", tmp_path / "ts", tmp_path, splits=("all",))
    assert set(report.parts) == {"ct", "mr"}
    [(name, masks)] = read_back(output / "mr", "mapping_mri_abdomen.json")
    assert name == "s0001" and masks["liver"].sum() == 48 and masks["vertebrae"].sum() == 8
    assert json.loads((output / "mr" / "mapping_mri_abdomen.json").read_text())["labels"]["vertebrae"] == [19]
    nifti(tmp_path / "ts" / "s0001" / "segmentations" / "vertebrae_L1.nii.gz", blob(0, 1, 0, 1, 0, 1))
    refused("totalsegmentator", tmp_path / "ts", tmp_path / "r", r"vertebrae_L1.nii.gz' is not a TotalSegmentator structure.*total_mr",
            splits=("all",))


@pytest.mark.skipif(not (TS_EXAMPLE / "example_seg_fast").is_dir(), reason="TotalSegmentator 2.18.0 archive not extracted")
def test_totalsegmentator_reads_the_real_one_file_per_structure_example(tmp_path):
    case = tmp_path / "ts" / "s0000"
    case.mkdir(parents=True)
    (case / "ct.nii.gz").symlink_to(TS_EXAMPLE / "example_ct_sm.nii.gz")
    (case / "segmentations").symlink_to(TS_EXAMPLE / "example_seg_fast")  # also holds a PNG and a JSON: skipped
    output, _ = convert("totalsegmentator", tmp_path / "ts", tmp_path, splits=("all",), symlink=True)
    merged = sitk.GetArrayFromImage(sitk.ReadImage(str(output / "ct" / "labelsTr" / "s0000.nii.gz")))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(TS_EXAMPLE / "example_seg_fast.nii.gz")))
    assert np.array_equal(merged, reference)  # the per-structure files merge back into TotalSegmentator's own map
    [(_, masks)] = read_back(output / "ct", "mapping_ct_abdomen.json")
    assert masks["liver"].sum() > 1000


# ------------------------------------------------------------------------------------------ AMOS
AMOS_TABLE = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder",
              "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava", "10": "pancreas",
              "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum", "14": "bladder",
              "15": "prostate/uterus"}


def amos_fixture(root: Path) -> Path:
    for number in (1, 507):
        labels = blob(1, 3, 1, 4, 1, 4, 6)
        labels[4:6, 5:7, 5:8] = 1
        labels[0, 0, 0] = 15
        labels[5, 0, 0] = 14
        nifti(root / "imagesTr" / f"amos_{number:04d}.nii.gz", ct(number))
        nifti(root / "labelsTr" / f"amos_{number:04d}.nii.gz", labels)
    nifti(root / "imagesVa" / "amos_0008.nii.gz", ct(8))
    nifti(root / "labelsVa" / "amos_0008.nii.gz", blob(1, 3, 1, 4, 1, 4, 6))
    (root / "dataset.json").write_text(json.dumps({"name": "AMOS", "labels": AMOS_TABLE}))
    return root


def test_amos_splits_ct_and_mr_by_case_id_with_one_mapping_per_context(tmp_path):
    output, report = convert("amos", amos_fixture(tmp_path / "amos"), tmp_path)
    assert {name: part["cases"] for name, part in report.parts.items()} == {"ct": 1, "mr": 1}
    [(name, masks)] = read_back(output / "ct", "mapping_ct_abdomen.json")
    assert name == "amos_0001" and masks["liver"].sum() == 18 and masks["spleen"].sum() == 12
    assert "oesophagus" in masks and "duodenum" in masks
    [(name, mr)] = read_back(output / "mr", "mapping_mri_abdomen.json")
    assert name == "amos_0507" and "oesophagus" not in mr and mr["liver"].sum() == 18
    [(_, pelvis)] = read_back(output / "mr", "mapping_mri_pelvis.json")
    assert pelvis["bladder"].sum() == 1
    mapping = load_mapping(output / "ct" / "mapping_ct_abdomen.json")
    assert 15 in mapping.ignore and 14 in mapping.ignore  # prostate/uterus and the pelvic bladder: said so
    both, report = convert("amos", tmp_path / "amos", tmp_path / "v", splits=("train", "val"))
    assert report.parts["ct"]["cases"] == 2
    repackaged = {name.replace("arota", "aorta").replace("postcava", "inferior vena cava"): int(value)
                  for value, name in AMOS_TABLE.items()}  # an nnU-Net v2 copy: name -> value, spelling fixed
    (tmp_path / "amos" / "dataset.json").write_text(json.dumps({"labels": repackaged}))
    convert("amos", tmp_path / "amos", tmp_path / "n")


def test_amos_refuses_another_label_table_and_a_value_the_mapping_does_not_name(tmp_path):
    source = amos_fixture(tmp_path / "amos")
    nifti(source / "labelsTr" / "amos_0001.nii.gz", blob(1, 3, 1, 4, 1, 4, 16))
    error = refused("amos", source, tmp_path, r"amos_0001.nii.gz' holds value\(s\) 16 that the mapping")
    assert "mapping_ct_abdomen.json" in str(error)
    table = dict(AMOS_TABLE, **{"6": "kidney"})
    (source / "dataset.json").write_text(json.dumps({"labels": table}))
    refused("amos", source, tmp_path, "does not hold AMOS22's label table")
    (source / "labelsTr" / "amos_0001.nii.gz").unlink()
    (source / "dataset.json").write_text(json.dumps({"labels": AMOS_TABLE}))
    refused("amos", source, tmp_path, "amos_0001.nii.gz' has no label")


# ------------------------------------------------------------------------------------------ BTCV
def test_btcv_finds_img_and_label_under_abdomen_rawdata_training(tmp_path):
    training = tmp_path / "Abdomen" / "RawData" / "Training"
    for number in (1, 2):
        labels = blob(0, 2, 0, 3, 0, 3, 6)
        labels[3:5, 4:6, 4:6] = 10
        nifti(training / "img" / f"img{number:04d}.nii.gz", ct(number))
        nifti(training / "label" / f"label{number:04d}.nii.gz", labels)
    output, report = convert("btcv", tmp_path / "Abdomen", tmp_path)
    cases = read_back(output / "ct", "mapping_ct_abdomen.json")
    assert [name for name, _ in cases] == ["btcv_0001", "btcv_0002"]
    assert cases[0][1]["liver"].sum() == 18 and cases[0][1]["portal_splenic_vein"].sum() == 8
    assert len(cases[0][1]) == 13
    (training / "label" / "label0002.nii.gz").unlink()
    refused("btcv", tmp_path / "Abdomen", tmp_path / "r", "img0002.nii.gz' has no label")
    refused("btcv", training / "img", tmp_path / "r", "not a BTCV abdomen folder")


# ------------------------------------------------------------------------------------------ KiTS
def test_kits_splits_the_kidneys_into_right_and_left_by_the_body_mid_line(tmp_path):
    shape = (6, 10, 20)
    image = np.full(shape, -1000, dtype=np.int16)
    image[:, 1:9, 2:18] = 40  # the body, centred on i = 9.5
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:5, 3:7, 3:7] = 1  # low i: low x, the patient's right (LPS)
    labels[2:4, 4:6, 3:5] = 2  # a tumour in the right kidney
    labels[1:5, 3:7, 13:17] = 1  # high i: the patient's left
    labels[2, 4, 15] = 3  # a cyst in the left kidney
    nifti(tmp_path / "kits19" / "data" / "case_00000" / "imaging.nii.gz", image, (1.0, 1.0, 1.0))
    nifti(tmp_path / "kits19" / "data" / "case_00000" / "segmentation.nii.gz", labels, (1.0, 1.0, 1.0))
    nifti(tmp_path / "kits19" / "data" / "case_00210" / "imaging.nii.gz", image, (1.0, 1.0, 1.0))  # a test case
    output, report = convert("kits", tmp_path / "kits19", tmp_path)
    [(_, masks)] = read_back(output / "ct", "mapping_ct_abdomen.json")
    right, left = masks["kidney_right"], masks["kidney_left"]
    assert right.sum() == 64 and left.sum() == 64  # tumours and cysts count as their kidney
    assert right[:, :, 10:].sum() == 0  # low i is low x: the patient's right
    assert left[:, :, :10].sum() == 0 and masks["kidney_tumour"].sum() == 8
    assert any("case_00210" in note for note in report.notes)


def test_kits21_reads_the_aggregated_majority_label_and_refuses_foreign_values(tmp_path):
    case = tmp_path / "kits21" / "data" / "case_00001"
    nifti(case / "imaging.nii.gz", ct(1))
    nifti(case / "aggregated_MAJ_seg.nii.gz", blob(1, 3, 1, 3, 1, 3, 3))
    output, _ = convert("kits", tmp_path / "kits21", tmp_path)
    [(_, masks)] = read_back(output / "ct", "mapping_ct_abdomen.json")
    assert masks["kidney_left"].sum() + masks["kidney_right"].sum() == 8 and masks["kidney_tumour"].sum() == 0
    nifti(case / "aggregated_MAJ_seg.nii.gz", blob(1, 3, 1, 3, 1, 3, 4))
    refused("kits", tmp_path / "kits21", tmp_path / "r", "holds value")
    refused("kits", tmp_path / "kits21" / "data" / "case_00001", tmp_path / "r", "no KiTS case folder")


# ------------------------------------------------------------------------------------------ LiTS
def test_lits_pairs_volumes_and_segmentations_across_batch_folders(tmp_path):
    nifti(tmp_path / "lits" / "Training Batch 1" / "volume-0.nii", ct(0).astype(np.float32))
    nifti(tmp_path / "lits" / "Training Batch 1" / "segmentation-0.nii", blob(1, 3, 1, 5, 1, 5, 1).astype(np.float32))
    labels = blob(1, 3, 1, 5, 1, 5, 1)
    labels[2, 2, 2] = 2
    nifti(tmp_path / "lits" / "Training Batch 2" / "volume-28.nii", ct(28))
    nifti(tmp_path / "lits" / "Training Batch 2" / "segmentation-28.nii", labels)
    output, _ = convert("lits", tmp_path / "lits", tmp_path)
    cases = dict(read_back(output / "ct", "mapping_ct_abdomen.json"))
    assert set(cases) == {"lits_000", "lits_028"}
    assert cases["lits_028"]["liver"].sum() == 32 and cases["lits_028"]["liver_tumour"].sum() == 1
    (tmp_path / "lits" / "Training Batch 2" / "segmentation-28.nii").unlink()
    refused("lits", tmp_path / "lits", tmp_path / "r", "volume-28.nii' has no segmentation-28")


# ----------------------------------------------------------------------------------------- CHAOS
def dicom_slice(path: Path, pixels: np.ndarray, position, modality="CT", spacing=(1.5, 1.5)) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, modality
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, (-1024 if modality == "CT" else 0)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def png(path: Path, grey: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey.astype(np.uint8), mode="L").save(path)


def chaos_fixture(root: Path) -> Path:
    rows, columns, count = 6, 8, 3
    for k in range(count):  # CT: DICOM names i0000,0000b.dcm ...; masks liver_GT_000.png ...
        dicom_slice(root / "CT" / "1" / "DICOM_anon" / f"i{k:04d},0000b.dcm", np.full((rows, columns), 1064 + k),
                    (0.0, 0.0, 3.0 * (count - 1 - k)))  # positions descending with the names, as the challenge's data do
        mask = np.zeros((rows, columns))
        mask[1:4, 2:6] = 255 if k else 0
        png(root / "CT" / "1" / "Ground" / f"liver_GT_{k:03d}.png", mask)
    for sequence, phases in (("T1DUAL", ("InPhase", "OutPhase")), ("T2SPIR", (None,))):
        for phase in phases:
            folder = root / "MR" / "2" / sequence / "DICOM_anon"
            folder = folder / phase if phase else folder
            for k in range(count):
                dicom_slice(folder / f"IMG-0004-{k + 1:05d}.dcm", np.full((rows, columns), 300 + k), (0.0, 0.0, 6.0 * k), "MR")
        for k in range(count):
            grey = np.zeros((rows, columns))
            grey[0:2, 0:3] = 63   # liver
            grey[3:5, 0:2] = 126  # right kidney
            grey[3:5, 6:8] = 189  # left kidney
            grey[0:2, 6:8] = 252  # spleen
            png(root / "MR" / "2" / sequence / "Ground" / f"IMG-0004-{k + 1:05d}.png", grey)
    return root


def test_chaos_builds_volumes_from_dicom_slices_and_png_masks_by_grey_value(tmp_path):
    output, report = convert("chaos", chaos_fixture(tmp_path / "CHAOS_Train_Sets" / "Train_Sets"), tmp_path)
    assert set(report.parts) == {"ct", "mr_t1_in", "mr_t1_out", "mr_t2"}
    [(_, liver)] = read_back(output / "ct", "mapping_ct_abdomen.json")
    assert liver["liver"].sum() == 2 * 12 and not liver["liver"][0].any()  # PNG k pairs with DICOM k by name
    image = sitk.ReadImage(str(output / "ct" / "imagesTr" / "chaos_ct_1.nii.gz"))
    assert image.GetSpacing() == pytest.approx((1.5, 1.5, 3.0)) and image.GetDirection()[8] == pytest.approx(-1.0)
    assert sitk.GetArrayFromImage(image)[:, 0, 0].tolist() == [40, 41, 42]  # HU: rescale applied, name order kept
    [(_, mr)] = read_back(output / "mr_t2", "mapping_mri_abdomen.json")
    assert {k: int(v.sum()) for k, v in mr.items()} == {"liver": 18, "kidney_right": 12, "kidney_left": 12, "spleen": 12}


def test_chaos_refuses_stray_grey_values_and_unpaired_masks(tmp_path):
    root = chaos_fixture(tmp_path / "chaos")
    stray = np.zeros((6, 8))
    stray[0, 0] = 90
    png(root / "MR" / "2" / "T2SPIR" / "Ground" / "IMG-0004-00002.png", stray)
    refused("chaos", root, tmp_path, "IMG-0004-00002.png' holds grey value.*90")
    (root / "MR" / "2" / "T2SPIR" / "Ground" / "IMG-0004-00002.png").unlink()
    refused("chaos", root, tmp_path, "holds 2 PNG mask.*for 3 DICOM")
    refused("chaos", tmp_path / "chaos" / "CT" / "1", tmp_path, "not a CHAOS folder")


# --------------------------------------------------------------------------------------- HECKTOR
def test_hecktor_resamples_ct_and_pet_onto_the_label_grid(tmp_path):
    root = tmp_path / "hecktor2022" / "hecktor2022_training"
    labels = blob(1, 3, 2, 4, 2, 5, 1)
    labels[4, 5:7, 6:8] = 2
    nifti(root / "labelsTr" / "CHUM-001.nii.gz", labels, (1.0, 1.0, 1.0))
    nifti(root / "imagesTr" / "CHUM-001__CT.nii.gz", ct(1), (1.0, 1.0, 1.0))  # on the label's grid: kept as it is
    nifti(root / "imagesTr" / "CHUM-001__PT.nii.gz", np.ones((3, 4, 5), np.float32) * 5, (2.0, 2.0, 2.0))  # coarser
    output, report = convert("hecktor", tmp_path / "hecktor2022", tmp_path)
    for part, mapping in (("ct", "mapping_ct_head_neck.json"), ("pet", "mapping_pet_head_neck.json")):
        [(_, masks)] = read_back(output / part, mapping)
        assert masks["gtvp"].sum() == 12 and masks["gtvn"].sum() == 4
    pet = sitk.ReadImage(str(output / "pet" / "imagesTr" / "CHUM-001.nii.gz"))
    assert pet.GetSize() == (10, 8, 6) and sitk.GetArrayFromImage(pet)[1, 1, 1] == pytest.approx(5.0)
    assert any("1 image(s) resampled" in note for note in report.notes)
    (root / "imagesTr" / "CHUM-001__PT.nii.gz").unlink()
    refused("hecktor", tmp_path / "hecktor2022", tmp_path / "r", "CHUM-001__CT.nii.gz' has no PET")


# ----------------------------------------------------------------------------------------- BraTS
@pytest.mark.parametrize("release, separator, suffixes, enhancing", [
    ("2021", "_", ("t1", "t1ce", "t2", "flair"), 4),
    ("2023", "-", ("t1n", "t1c", "t2w", "t2f"), 3),
])
def test_brats_gives_one_part_per_sequence_with_the_whole_tumour(tmp_path, release, separator, suffixes, enhancing):
    name = "BraTS2021_00000" if release == "2021" else "BraTS-GLI-00000-000"
    case = tmp_path / "brats" / f"BraTS{release}_TrainingData" / name  # the archive's wrapping folder
    labels = blob(1, 4, 2, 5, 2, 6, 2)
    labels[2, 3, 3] = 1
    labels[2, 3, 4] = enhancing
    for suffix in suffixes:
        nifti(case / f"{name}{separator}{suffix}.nii.gz", ct(0).astype(np.float32), (1.0, 1.0, 1.0))
    nifti(case / f"{name}{separator}seg.nii.gz", labels, (1.0, 1.0, 1.0))
    output, report = convert("brats", tmp_path / "brats", tmp_path)
    assert set(report.parts) == {"t1", "t1ce", "t2", "flair"}
    [(_, masks)] = read_back(output / "flair", "mapping_mri_brain_flair.json")
    assert masks["brain_tumour"].sum() == 36
    other = 3 if enhancing == 4 else 4  # the other release's enhancing value
    labels[2, 3, 4] = other
    nifti(case / f"{name}{separator}seg.nii.gz", labels, (1.0, 1.0, 1.0))
    refused("brats", tmp_path / "brats", tmp_path / "r", rf"holds value\(s\) {other} that the mapping")


def test_brats_refuses_a_case_without_labels(tmp_path):
    case = tmp_path / "brats" / "BraTS2021_00001"
    for suffix in ("t1", "t1ce", "t2", "flair"):
        nifti(case / f"BraTS2021_00001_{suffix}.nii.gz", ct(0))
    refused("brats", tmp_path / "brats", tmp_path, "BraTS2021_00001_seg.nii.gz' is missing")
    refused("brats", case, tmp_path, "holds no BraTS case folder")


# ------------------------------------------------------------------------------------------- MSD
def msd_task(root: Path, task: str, channels: int = 1) -> Path:
    folder = root / task
    part, modality, labels, _ = TASKS[task]
    values = [int(v) for v in labels]
    label = blob(1, 3, 1, 4, 1, 4, values[0])
    label[4, 5, 5] = values[-1]
    image = ct(0).astype(np.float32)
    nifti(folder / "labelsTr" / "case_001.nii.gz", label)
    if channels == 1:
        nifti(folder / "imagesTr" / "case_001.nii.gz", image)
    else:
        layers = [sitk.GetImageFromArray(image + c) for c in range(channels)]
        for layer in layers:
            layer.SetSpacing((2.0, 2.0, 3.0))
        stacked = sitk.JoinSeries(layers)
        (folder / "imagesTr").mkdir()
        sitk.WriteImage(stacked, str(folder / "imagesTr" / "case_001.nii.gz"), True)
    (folder / "dataset.json").write_text(json.dumps({
        "name": task.split("_", 1)[1], "modality": modality, "labels": {"0": "background", **labels},
        "training": [{"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}]}))
    return folder


def test_every_ready_msd_mapping_file_loads_and_every_task_is_accounted_for():
    assert len(TASKS) == 10
    for task, (_, _, _, unmapped) in TASKS.items():
        files = mapping_files(task)
        assert bool(files) == (unmapped is None), task
        for path in files:
            load_mapping(path)
    assert sorted(p.name for p in (MAPPINGS / "Task01_BrainTumour").iterdir()) == [
        "mapping_mri_brain_flair.json", "mapping_mri_brain_t1.json", "mapping_mri_brain_t1gd.json", "mapping_mri_brain_t2.json"]


def test_msd_tasks_convert_with_their_mapping_files_including_a_4d_image(tmp_path):
    output, _ = convert("msd", msd_task(tmp_path, "Task03_Liver"), tmp_path)
    [(_, masks)] = read_back(output / "ct", "mapping_ct_abdomen.json")
    assert masks["liver"].sum() == 19 and masks["liver_tumour"].sum() == 1
    brain, _ = convert("msd", msd_task(tmp_path / "b", "Task01_BrainTumour", channels=4), tmp_path / "b")
    [(_, masks)] = read_back(brain / "mri", "mapping_mri_brain_t1gd.json")
    assert masks["brain_tumour"].sum() == 19
    # the ready mapping files also read the task folder as it is, with no conversion
    [(_, direct)] = [(e.name, m) for e, _, _, m in iter_decathlon_cases(tmp_path / "Task03_Liver",
                                                                       MAPPINGS / "Task03_Liver" / "mapping_ct_abdomen.json")]
    assert direct["liver_tumour"].sum() == 1


def test_msd_refuses_unmappable_tasks_and_a_task_whose_labels_differ(tmp_path):
    refused("msd", msd_task(tmp_path, "Task02_Heart"), tmp_path, "Task02_Heart cannot be mapped: the ontology has no left atrium")
    folder = msd_task(tmp_path, "Task09_Spleen")
    manifest = json.loads((folder / "dataset.json").read_text())
    manifest["labels"] = {"0": "background", "1": "liver"}
    (folder / "dataset.json").write_text(json.dumps(manifest))
    refused("msd", folder, tmp_path, "'labels' is .*but Task09_Spleen has")
    (folder / "dataset.json").unlink()
    refused("msd", folder, tmp_path, "has no dataset.json")


# ------------------------------------------------------------------------------ common behaviour
def test_an_existing_output_an_unknown_layout_and_an_output_inside_the_source_are_refused(tmp_path):
    source = amos_fixture(tmp_path / "amos")
    (tmp_path / "taken").mkdir()
    with pytest.raises(LayoutError, match="exists.*--overwrite"):
        convert_dataset("amos", source, tmp_path / "taken")
    with pytest.raises(LayoutError, match="unknown layout 'nnunet'"):
        convert_dataset("nnunet", source, tmp_path / "x")
    with pytest.raises(LayoutError, match="inside the source"):
        convert_dataset("amos", source, source / "converted")
    with pytest.raises(LayoutError, match="has no splits"):
        convert_dataset("btcv", source, tmp_path / "y", ConvertOptions(splits=("train",)))
    assert set(LAYOUTS) == {"totalsegmentator", "amos", "btcv", "chaos", "kits", "lits", "hecktor", "brats", "msd"}


def test_overwrite_replaces_only_an_earlier_conversion_or_an_empty_folder(tmp_path, capsys):
    """--overwrite deletes the output folder: never one holding the source, a file, or files that no
    earlier conversion wrote; each is refused by name and left as it was."""
    from DuPLUSLib.cli import main

    data = tmp_path / "data"
    source = amos_fixture(data / "amos_raw")
    (data / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main(["data", "convert", "--layout", "amos", str(source), "-o", str(data), "--overwrite"]) == 2
    assert f"'{source}' lies inside the output '{data}'" in capsys.readouterr().err
    with pytest.raises(LayoutError, match="lies inside the output.*choose an empty or new folder"):
        convert_dataset("amos", source, data, overwrite=True)
    with pytest.raises(LayoutError, match=r"'.*notes.txt' is a file, not a folder; choose an empty or new folder"):
        convert_dataset("amos", source, data / "notes.txt", overwrite=True)
    other = tmp_path / "other"
    (other / "keep").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"'.*other' is not the output of an earlier conversion \(it has no "
                                          r"conversion.json\).*choose an empty or new folder"):
        convert_dataset("amos", source, other, overwrite=True)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before and (other / "keep").is_dir()
    assert not [p for p in tmp_path.rglob(".*-converting-*")]
    output = tmp_path / "converted"
    output.mkdir()  # an empty folder: nothing to lose
    convert_dataset("amos", source, output, overwrite=True)
    (output / "ct" / "stale.txt").write_text("from the earlier conversion")
    convert_dataset("amos", source, output, overwrite=True)  # an earlier conversion: replaced
    assert (output / "conversion.json").is_file() and not (output / "ct" / "stale.txt").exists()


def test_symlink_links_unchanged_images_instead_of_copying(tmp_path):
    output, _ = convert("amos", amos_fixture(tmp_path / "amos"), tmp_path, symlink=True)
    image = output / "ct" / "imagesTr" / "amos_0001.nii.gz"
    assert image.is_symlink() and image.resolve() == (tmp_path / "amos" / "imagesTr" / "amos_0001.nii.gz").resolve()
    assert not (output / "ct" / "labelsTr" / "amos_0001.nii.gz").is_symlink()
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o777 & ~umask  # not the staging folder's private 0700


def test_the_duplus_data_convert_command(tmp_path, capsys):
    from DuPLUSLib.cli import main

    source = amos_fixture(tmp_path / "amos")
    assert main(["data", "convert", "--layout", "amos", str(source), "-o", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parts"]["ct"]["mappings"][0].endswith("mapping_ct_abdomen.json")
    assert main(["data", "convert", "--layout", "btcv", str(source), "-o", str(tmp_path / "bad")]) == 2
    assert "not a BTCV abdomen folder" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------ the recipes
RECIPES = sorted((REPOSITORY / "configs" / "recipes").glob("*.yaml"))


def test_there_is_a_recipe_per_dataset_mix():
    assert {p.stem for p in RECIPES} >= {"totalsegmentator", "amos", "abdomen_ct_mix", "hecktor", "brats", "msd_all"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_loads_and_names_its_commands(recipe):
    from DuPLUSLib.training.config import load_config

    config = load_config(recipe)  # parsing only: the data need not be present
    text = recipe.read_text(encoding="utf-8")
    assert text.startswith("#") and "duplus train" in text and "torchrun" in text
    decathlon = [d for d in config.datasets if d.kind in ("decathlon", "synth") and d.path]
    assert decathlon, "a recipe trains on real data"
    for dataset in decathlon:
        if "resources/mappings" not in str(dataset.mapping):
            assert "duplus data convert" in text
    for dataset in config.datasets:  # ready mapping files that ship with the package exist
        if dataset.mapping and "DuPLUSLib/resources" in dataset.mapping:
            assert (REPOSITORY / dataset.mapping).is_file(), dataset.mapping


def _documents_written_by_the_conversions() -> dict[str, dict[str, dict]]:
    """'data/<folder>/<part>' as the recipes name it -> the mapping documents its conversion writes."""
    from DuPLUSLib.datasets.layouts import amos, brats, btcv, chaos, hecktor, kits, lits, totalsegmentator

    parts = {
        "data/totalsegmentator/ct": totalsegmentator.mappings(),
        "data/amos/ct": amos.mappings("CT"), "data/amos/mr": amos.mappings("MRI"),
        "data/btcv/ct": btcv.mappings(), "data/kits/ct": kits.mappings(), "data/lits/ct": lits.mappings(),
        "data/chaos/ct": chaos.mappings("CT"),
        "data/hecktor/ct": hecktor.mappings("CT"), "data/hecktor/pet": hecktor.mappings("PET"),
    }
    parts.update({f"data/chaos/{part}": chaos.mappings("MRI") for part in chaos.MR_PARTS})
    parts.update({f"data/brats/{part}": brats.mappings(part, (1, 2, 4)) for part in ("t1", "t1ce", "t2", "flair")})
    for task, (part, _, _, _) in TASKS.items():
        parts[f"data/msd/{task}/{part}"] = {p.name: json.loads(p.read_text()) for p in mapping_files(task)}
    return parts


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_names_mapping_files_its_conversions_write_and_synthesis_can_use(recipe, tmp_path):
    from DuPLUSLib.ontology import load_ontology
    from DuPLUSLib.training.config import load_config

    ontology = load_ontology()
    written = _documents_written_by_the_conversions()
    for index, dataset in enumerate(load_config(recipe).datasets):
        if not dataset.mapping:
            continue
        folder, name = dataset.mapping.rsplit("/", 1)
        assert folder == dataset.path, f"datasets[{index}]: the mapping lies in another folder than the data"
        assert folder in written and name in written[folder], f"datasets[{index}]: no conversion writes {dataset.mapping}"
        path = tmp_path / f"{index}-{name}"
        path.write_text(json.dumps(written[folder][name]))
        mapping = load_mapping(path, ontology)
        for modality in dataset.modalities or []:  # what synthetic_case_specs checks once the data exist
            assert mapping.region in ontology.regions_of(modality), (index, modality)
            assert set(mapping.structures) & set(ontology.structures_of(modality, mapping.region)), (index, modality)


def test_a_label_header_that_differs_by_rounding_is_written_on_the_image_grid_and_a_shifted_one_is_refused(tmp_path):
    training = tmp_path / "btcv" / "Training"
    nifti(training / "img" / "img0001.nii.gz", ct(1))
    nifti(training / "label" / "label0001.nii.gz", blob(0, 2, 0, 3, 0, 3, 6), origin=(0.02, 0.0, 0.0))
    output, _ = convert("btcv", tmp_path / "btcv", tmp_path)
    [(_, masks)] = read_back(output / "ct", "mapping_ct_abdomen.json")  # the training reader's stricter check passes
    assert masks["liver"].sum() == 18
    nifti(training / "label" / "label0001.nii.gz", blob(0, 2, 0, 3, 0, 3, 6), origin=(5.0, 0.0, 0.0))
    error = refused("btcv", tmp_path / "btcv", tmp_path / "r", "label0001.nii.gz' does not lie on the voxels of")
    assert "origin (5, 0, 0)" in str(error)
