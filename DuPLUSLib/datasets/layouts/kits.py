"""KiTS, the Kidney Tumor Segmentation challenges (2019, 2021, 2023): one folder per case.

    kits19/data/case_00000/imaging.nii.gz, segmentation.nii.gz         1 kidney, 2 tumour
    kits21/data/case_00000/imaging.nii.gz, aggregated_MAJ_seg.nii.gz   1 kidney, 2 tumour, 3 cyst
    kits23/dataset/case_00000/imaging.nii.gz, segmentation.nii.gz      1 kidney, 2 tumour, 3 cyst

The source may be the repository (with data/ or dataset/) or the folder of case folders. Case
folders with no segmentation (KiTS19's test cases 210-299) are left out and counted in the notes.

KiTS labels "kidney" without a side; the ontology has a left and a right kidney. Each connected
component of the labels (a kidney with its tumours and cysts) is given the side of its centre
against the body's mid-line in world coordinates (LPS: +x is the patient's left), and the values
are rewritten: 1/2 right/left kidney tissue, 3/4 right/left tumour, 5/6 right/left cyst. Then
``kidney_right`` = 1, 3, 5; ``kidney_left`` = 2, 4, 6 (tumours and cysts count as their kidney, as
KiTS's own "kidney and masses" region does) and ``kidney_tumour`` = 3, 4. Cysts have no structure
of their own in the ontology.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .common import ConversionReport, ConvertOptions, LayoutError, PartWriter, describe_grid, header, mapping_document, same_grid
from .common import natural_sorted, read_label

LABEL_FILES = ("segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz")
LICENCE = ("KiTS19: CC BY-NC-SA 4.0 (kits19.grand-challenge.org/data); KiTS21/23: check the licence in the "
           "kits21/kits23 repositories (non-commercial terms); a model trained on them inherits the terms")


def mappings() -> dict[str, dict]:
    return {"mapping_ct_abdomen.json": mapping_document(
        "KiTS labels split by side: 1/2 right/left kidney, 3/4 right/left tumour, 5/6 right/left cyst; "
        "tumours and cysts count as their kidney; cysts have no structure of their own", "CT", "abdomen",
        {"kidney_right": [1, 3, 5], "kidney_left": [2, 4, 6], "kidney_tumour": [3, 4]}, range(1, 7))}


def _case_root(source: Path) -> Path:
    for candidate in (source, source / "data", source / "dataset"):
        if candidate.is_dir() and any(re.fullmatch(r"case_\d{5}", p.name) for p in candidate.iterdir() if p.is_dir()):
            return candidate
    raise LayoutError(f"'{source}' holds no KiTS case folder: expected case_NNNNN/imaging.nii.gz in it, "
                      "or in its data/ (KiTS19, KiTS21) or dataset/ (KiTS23) folder")


def split_sides(labels: np.ndarray, image) -> np.ndarray:
    """Rewrite KiTS values (1 kidney, 2 tumour, 3 cyst) into right/left values 1-6 (see the module)."""
    from scipy import ndimage

    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return labels.astype(np.uint8)
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    body = np.argwhere(array[::4, ::4, ::4] > -300) * 4  # k, j, i of the body (subsampled)
    if len(body) == 0:
        body = np.argwhere(np.ones(array.shape, dtype=bool)[::8, ::8, ::8]) * 8
    midline = _world_x(image, body.mean(axis=0))
    centres = ndimage.center_of_mass(labels > 0, components, range(1, count + 1))
    left = np.zeros(count + 1, dtype=bool)
    for index, centre in enumerate(centres, start=1):
        left[index] = _world_x(image, np.asarray(centre)) > midline
    side = left[components]  # True where the voxel's component lies on the patient's left
    result = np.zeros(labels.shape, dtype=np.uint8)
    for value in (1, 2, 3):
        inside = labels == value
        result[inside & ~side] = 2 * value - 1
        result[inside & side] = 2 * value
    return result


def _world_x(image, kji: np.ndarray) -> float:
    k, j, i = (float(v) for v in kji)
    return image.TransformContinuousIndexToPhysicalPoint((i, j, k))[0]


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    import SimpleITK as sitk

    if options.splits:
        raise LayoutError("the kits layout has no splits; leave out --splits")
    report = ConversionReport("kits", str(source), licence=LICENCE)
    root = _case_root(source)
    writer = PartWriter(output, "ct", mappings(), "KiTS CTs, kidney labels split into right and left", options)
    unlabelled = []
    for case in natural_sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"case_\d{5}", p.name)):
        image_path = case / "imaging.nii.gz"
        if not image_path.is_file():
            raise LayoutError(f"'{image_path}' is missing; each KiTS case folder holds imaging.nii.gz")
        label_path = next((case / name for name in LABEL_FILES if (case / name).is_file()), None)
        if label_path is None:
            unlabelled.append(case.name)
            continue
        label_image, labels = read_label(label_path)
        unknown = sorted({int(v) for v in np.unique(labels)} - {0, 1, 2, 3})
        if unknown:
            raise LayoutError(f"label '{label_path}' holds value(s) {', '.join(map(str, unknown))}; KiTS labels "
                              "are 1 kidney, 2 tumour and 3 cyst")
        image = sitk.ReadImage(str(image_path))
        if not same_grid(image, label_image):
            raise LayoutError(f"label '{label_path}' does not lie on the voxels of '{image_path}' "
                              f"(image {describe_grid(header(image_path))}; label {describe_grid(label_image)})")
        sided = sitk.GetImageFromArray(split_sides(labels, image))
        sided.CopyInformation(label_image)
        writer.add(case.name, image_path, sided, label_source=label_path)
    if unlabelled:
        report.notes.append(f"{len(unlabelled)} case folder(s) without a segmentation left out "
                            f"(test cases): {', '.join(unlabelled[:5])}{' ...' if len(unlabelled) > 5 else ''}")
    if not writer.training:
        raise LayoutError(f"no case folder under '{root}' holds a segmentation ({' or '.join(LABEL_FILES)})")
    writer.finish(report)
    report.notes.append("kidneys split into right and left by each component's side of the body mid-line")
    return report
