"""The TotalSegmentator dataset: one folder per case, one file per structure.

    Totalsegmentator_dataset_v201/
      meta.csv                  image_id;...;split;...   (train / val / test, ';'-separated)
      s0000/ct.nii.gz
      s0000/segmentations/spleen.nii.gz, kidney_right.nii.gz, ... (117 in v2, 104 in v1)

The per-structure masks are merged into one label map numbered as TotalSegmentator's ``total``
task numbers its classes (``class_map["total"]`` in ``totalsegmentator/map_to_binary.py``), so the
mapping files reuse :data:`~DuPLUSLib.datasets.sources.TOTALSEGMENTATOR_TOTAL_CLASSES`. Version 1
file names are read too: its five heart chambers become the whole heart (51); its ``face`` and
``pulmonary_artery`` have no class in the ``total`` task and are left out (background).

The TotalSegmentator MRI dataset is read the same way when its case folders hold ``mri.nii.gz``
(part ``mr``, numbered as ``class_map["total_mr"]``; its layout is assumed to mirror the CT dataset).

``--splits`` picks rows of meta.csv (default ``train``); ``all`` takes every case folder and does
not need meta.csv. The test split is left out by default so it stays free for evaluation.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ...ontology import load_ontology
from ..sources import TOTALSEGMENTATOR_TOTAL_CLASSES
from .common import (ConversionReport, ConvertOptions, LayoutError, PartWriter, describe_grid, header,
                     mapping_document, natural_sorted, nifti_stem, same_grid)

# class_map["total"] of TotalSegmentator 2.x (value -> file name), as map_to_binary.py numbers it.
TOTAL_NAMES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
    "kidney_cyst_right", "sacrum", "vertebrae_S1", "vertebrae_L5", "vertebrae_L4", "vertebrae_L3",
    "vertebrae_L2", "vertebrae_L1", "vertebrae_T12", "vertebrae_T11", "vertebrae_T10", "vertebrae_T9",
    "vertebrae_T8", "vertebrae_T7", "vertebrae_T6", "vertebrae_T5", "vertebrae_T4", "vertebrae_T3",
    "vertebrae_T2", "vertebrae_T1", "vertebrae_C7", "vertebrae_C6", "vertebrae_C5", "vertebrae_C4",
    "vertebrae_C3", "vertebrae_C2", "vertebrae_C1", "heart", "aorta", "pulmonary_vein",
    "brachiocephalic_trunk", "subclavian_artery_right", "subclavian_artery_left",
    "common_carotid_artery_right", "common_carotid_artery_left", "brachiocephalic_vein_left",
    "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava", "inferior_vena_cava",
    "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right", "iliac_vena_left",
    "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left",
    "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right",
    "iliopsoas_left", "iliopsoas_right", "brain", "skull", "rib_left_1", "rib_left_2", "rib_left_3",
    "rib_left_4", "rib_left_5", "rib_left_6", "rib_left_7", "rib_left_8", "rib_left_9", "rib_left_10",
    "rib_left_11", "rib_left_12", "rib_right_1", "rib_right_2", "rib_right_3", "rib_right_4",
    "rib_right_5", "rib_right_6", "rib_right_7", "rib_right_8", "rib_right_9", "rib_right_10",
    "rib_right_11", "rib_right_12", "sternum", "costal_cartilages",
)
TOTAL_VALUES: dict[str, int] = {name: value for value, name in enumerate(TOTAL_NAMES, start=1)}
# Version 1 names that differ from version 2: the heart chambers make the whole heart; None: no class.
V1_NAMES: dict[str, str | None] = {
    "heart_myocardium": "heart", "heart_atrium_left": "heart", "heart_ventricle_left": "heart",
    "heart_atrium_right": "heart", "heart_ventricle_right": "heart", "pulmonary_artery": None, "face": None,
}
# class_map["total_mr"] of TotalSegmentator 2.x, for the MRI dataset (case folders with mri.nii.gz).
TOTAL_MR_NAMES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "lung_left", "lung_right", "esophagus", "small_bowel", "duodenum", "colon",
    "urinary_bladder", "prostate", "sacrum", "vertebrae", "intervertebral_discs", "spinal_cord", "heart", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
    "iliac_vena_left", "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right",
    "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
    "iliopsoas_right", "brain",
)
TOTAL_MR_VALUES: dict[str, int] = {name: value for value, name in enumerate(TOTAL_MR_NAMES, start=1)}
SPLITS = ("train", "val", "test")
LICENCE = ("TotalSegmentator CT dataset: CC BY 4.0 (Wasserthal et al., Radiology: AI 2023, "
           "doi:10.5281/zenodo.6802613 / 10047292); keep the attribution. The MRI dataset (zenodo 14710732) "
           "states its own licence: check it")


def mr_mappings() -> dict[str, dict]:
    """One mapping per MRI region that the ``total_mr`` classes cover (names read as ontology keys)."""
    from ...errors import UnknownPromptError

    ontology = load_ontology()
    keys: dict[str, str] = {}
    for name in TOTAL_MR_NAMES:
        try:
            keys[name] = ontology.structure_key(name)
        except UnknownPromptError:
            continue  # intervertebral discs, humeri, scapulae, clavicles: not in the ontology
    documents = {}
    for region in ontology.regions_of("MRI"):
        valid = set(ontology.structures_of("MRI", region))
        labels: dict[str, list[int]] = {}
        for name, key in keys.items():
            if key in valid:
                labels.setdefault(key, []).append(TOTAL_MR_VALUES[name])
        if labels:
            documents[f"mapping_mri_{region}.json"] = mapping_document(
                f"TotalSegmentator 'total_mr' classes as MRI {region} structures; the other values are ignored",
                "MRI", region, labels, TOTAL_MR_VALUES.values())
    return documents


def mappings() -> dict[str, dict]:
    """One mapping per CT region that the ``total`` classes cover."""
    ontology = load_ontology()
    documents = {}
    for region in ontology.regions_of("CT"):
        valid = set(ontology.structures_of("CT", region))
        labels = {key: list(values) for key, values in TOTALSEGMENTATOR_TOTAL_CLASSES.items() if key in valid}
        if not labels:
            continue
        documents[f"mapping_ct_{region}.json"] = mapping_document(
            f"TotalSegmentator 'total' classes as CT {region} structures; the other values (classes the "
            f"ontology lacks, such as scapulae, sternum, skull, the carotid and subclavian arteries, or "
            f"structures of other regions) are ignored",
            "CT", region, labels, TOTAL_VALUES.values())
    return documents


def _cases(source: Path, splits: tuple[str, ...] | None, report: ConversionReport) -> list[Path]:
    folders = natural_sorted(p for p in source.iterdir() if p.is_dir() and (p / "segmentations").is_dir())
    if not folders:
        raise LayoutError(
            f"'{source}' holds no case folder (expected sNNNN/ct.nii.gz and sNNNN/segmentations/*.nii.gz, "
            "as in the TotalSegmentator dataset)")
    splits = splits or ("train",)
    if splits == ("all",):
        report.notes.append("all case folders converted (--splits all); meta.csv not read")
        return folders
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise LayoutError(f"unknown split(s) {', '.join(sorted(unknown))}; TotalSegmentator's meta.csv has "
                          f"{', '.join(SPLITS)} (or pass --splits all)")
    meta = source / "meta.csv"
    if not meta.is_file():
        raise LayoutError(f"'{meta}' is missing: it says which cases are train, val and test. Use the "
                          "dataset's meta.csv, or pass --splits all to convert every case folder")
    text = meta.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(text.splitlines(), delimiter=";" if ";" in text.splitlines()[0] else ","))
    if not rows or not {"image_id", "split"} <= set(rows[0]):
        raise LayoutError(f"'{meta}' needs the columns image_id and split (';'-separated), as the dataset ships it")
    wanted = [row["image_id"].strip() for row in rows if row["split"].strip() in splits]
    by_name = {p.name: p for p in folders}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise LayoutError(f"'{meta}' lists case(s) with no folder in '{source}': {', '.join(missing[:10])}{more}")
    left = len(folders) - len(wanted)
    report.notes.append(f"splits {', '.join(splits)} of meta.csv: {len(wanted)} cases; {left} case folder(s) left out")
    return [by_name[name] for name in wanted]


def _image_of(case: Path) -> tuple[str, Path]:
    found = [(kind, case / name) for kind, name in (("ct", "ct.nii.gz"), ("mr", "mri.nii.gz")) if (case / name).is_file()]
    if len(found) != 1:
        raise LayoutError(f"'{case}' holds {'both ct.nii.gz and mri.nii.gz' if found else 'neither ct.nii.gz nor mri.nii.gz'}; "
                          "each TotalSegmentator case folder holds one image (ct.nii.gz, or mri.nii.gz in the MRI dataset)")
    return found[0]


def _label_map(case: Path):
    import SimpleITK as sitk

    kind, ct_path = _image_of(case)
    values, v1 = (TOTAL_VALUES, V1_NAMES) if kind == "ct" else (TOTAL_MR_VALUES, {})
    task = "total" if kind == "ct" else "total_mr"
    grid = header(ct_path)
    files = natural_sorted(p for p in (case / "segmentations").iterdir() if nifti_stem(p) is not None)
    if not files:
        raise LayoutError(f"'{case / 'segmentations'}' holds no .nii.gz file")
    labels = np.zeros(tuple(reversed(grid.GetSize())), dtype=np.uint8)
    for path in files:
        name = nifti_stem(path)
        if name in values:
            value = values[name]
        elif name in v1:
            if v1[name] is None:
                continue
            value = values[v1[name]]
        else:
            raise LayoutError(
                f"'{path}' is not a TotalSegmentator structure: '{name}' is not a class of the '{task}' task "
                f"(map_to_binary.py class_map['{task}'])" + (" nor a version 1 name" if kind == "ct" else ""))
        mask_image = sitk.ReadImage(str(path))
        if not same_grid(mask_image, grid):
            raise LayoutError(f"'{path}' does not lie on the voxels of '{ct_path}' "
                              f"(mask {describe_grid(mask_image)}; CT {describe_grid(grid)})")
        labels[sitk.GetArrayViewFromImage(mask_image) > 0] = value
    label_image = sitk.GetImageFromArray(labels)
    label_image.SetSpacing(grid.GetSpacing())
    label_image.SetOrigin(grid.GetOrigin())
    label_image.SetDirection(grid.GetDirection())
    return kind, ct_path, label_image


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    report = ConversionReport("totalsegmentator", str(source), licence=LICENCE)
    cases = _cases(source, options.splits, report)
    writers: dict[str, PartWriter] = {}
    for case in cases:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", case.name):
            raise LayoutError(f"case folder '{case}' has an unexpected name")
        kind, image_path, label_image = _label_map(case)
        if kind not in writers:
            writers[kind] = PartWriter(
                output, kind, mappings() if kind == "ct" else mr_mappings(),
                f"TotalSegmentator {'CT' if kind == 'ct' else 'MRI'} dataset, '{'total' if kind == 'ct' else 'total_mr'}' "
                "classes merged into one label map per case", options)
        writers[kind].add(case.name, image_path, label_image, label_source=case / "segmentations")
    for writer in writers.values():
        writer.finish(report)
    return report
