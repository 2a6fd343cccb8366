"""CHAOS (Kavur et al., 2021): abdominal CT and MR as DICOM slices with PNG ground truth.

    Train_Sets/CT/<id>/DICOM_anon/*.dcm   Ground/liver_GT_000.png ...   (liver: any non-zero)
    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/InPhase/*.dcm, OutPhase/*.dcm   T1DUAL/Ground/*.png
    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm                           T2SPIR/Ground/*.png

MR ground-truth PNGs code the organs by grey value: liver 63 (55-70), right kidney 126 (110-135),
left kidney 189 (175-200), spleen 252 (240-255); any other non-zero value is refused. As in the
challenge's own evaluation code, slices are paired by the order of their file names (PNG k with
DICOM k, both sorted naturally) and the volume's geometry is taken from the first and last DICOM
file in that order. Parts: ``ct`` (CT abdomen: liver), ``mr_t1_in``, ``mr_t1_out`` and ``mr_t2``
(MRI abdomen: liver, right and left kidney, spleen). Label values written: 1 liver, 2 right kidney,
3 left kidney, 4 spleen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import ConversionReport, ConvertOptions, LayoutError, PartWriter, mapping_document, natural_sorted, require_dir

MR_GREY = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))  # (low, high, value), inclusive
MR_LABELS = {"1": "liver", "2": "kidney_right", "3": "kidney_left", "4": "spleen"}
LICENCE = "CHAOS: CC BY-SA 4.0 (zenodo.org/record/3431873); share alike, keep the attribution"
MR_PARTS = {"mr_t1_in": ("T1DUAL", "InPhase"), "mr_t1_out": ("T1DUAL", "OutPhase"), "mr_t2": ("T2SPIR", None)}


def mappings(modality: str) -> dict[str, dict]:
    if modality == "CT":
        return {"mapping_ct_abdomen.json": mapping_document("CHAOS CT: 1 liver", "CT", "abdomen", {"1": "liver"}, (1,))}
    return {"mapping_mri_abdomen.json": mapping_document(
        "CHAOS MR: 1 liver, 2 right kidney, 3 left kidney, 4 spleen", "MRI", "abdomen", MR_LABELS, (1, 2, 3, 4))}


def _root(source: Path) -> Path:
    for candidate in (source, source / "Train_Sets", source / "CHAOS_Train_Sets" / "Train_Sets"):
        if (candidate / "CT").is_dir() or (candidate / "MR").is_dir():
            return candidate
    raise LayoutError(f"'{source}' is not a CHAOS folder: expected CT/<id>/DICOM_anon and MR/<id>/T1DUAL, T2SPIR "
                      "in it or in Train_Sets/")


def read_dicom_series(folder: Path):
    """The slices of a folder, in file-name order, as a SimpleITK volume (values with rescale applied)."""
    import pydicom
    import SimpleITK as sitk

    files = natural_sorted(p for p in require_dir(folder, "a folder of DICOM slices").iterdir()
                           if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        raise LayoutError(f"'{folder}' holds no .dcm file")
    slices, positions = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path))
            pixels = ds.pixel_array.astype(np.float32)
            positions.append(np.array([float(v) for v in ds.ImagePositionPatient]))
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
            row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        except Exception as error:  # pydicom raises many kinds for a broken or foreign file
            raise LayoutError(f"cannot read DICOM slice '{path}': {error}") from None
        slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append(pixels * slope + intercept)
    if len({s.shape for s in slices}) != 1:
        raise LayoutError(f"the slices of '{folder}' differ in size")
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    if len(files) > 1:
        step = (positions[-1] - positions[0]) / (len(files) - 1)
        spacing = float(np.linalg.norm(step))
        if spacing == 0 or abs(np.dot(step / spacing, normal)) < 0.99:
            raise LayoutError(f"the slices of '{folder}' are not stacked along their normal (tilted or repeated positions)")
        offsets = [np.dot(p - positions[0], step / spacing) for p in positions]
        if np.max(np.abs(np.array(offsets) - spacing * np.arange(len(files)))) > 0.5 * spacing:
            raise LayoutError(f"the slices of '{folder}', in file-name order, are not evenly spaced")
        third = step / spacing
    else:
        spacing, third = float(getattr(ds, "SliceThickness", 1.0) or 1.0), normal
    image = sitk.GetImageFromArray(np.stack(slices))
    image.SetSpacing((column_spacing, row_spacing, spacing))
    image.SetOrigin(tuple(positions[0]))
    image.SetDirection(tuple(np.column_stack([along_row, along_column, third]).ravel()))
    return image, len(files)


def read_ground(folder: Path, count: int, shape: tuple[int, int], modality: str) -> np.ndarray:
    """The PNG masks of a Ground folder as label values [k, j, i]."""
    from PIL import Image

    files = natural_sorted(p for p in require_dir(folder, "CHAOS's Ground/ folder of PNG masks").iterdir()
                           if p.suffix.lower() == ".png")
    if len(files) != count:
        raise LayoutError(f"'{folder}' holds {len(files)} PNG mask(s) for {count} DICOM slice(s); they must pair one to one")
    labels = np.zeros((count, *shape), dtype=np.uint8)
    for k, path in enumerate(files):
        with Image.open(path) as png:
            grey = np.asarray(png.convert("L") if png.mode not in ("L", "I", "I;16") else png)
        if grey.shape != shape:
            raise LayoutError(f"'{path}' is {grey.shape[1]}x{grey.shape[0]} pixels, its DICOM slice {shape[1]}x{shape[0]}")
        if modality == "CT":
            labels[k][grey > 0] = 1
            continue
        coded = np.zeros(shape, dtype=bool)
        for low, high, value in MR_GREY:
            inside = (grey >= low) & (grey <= high)
            labels[k][inside] = value
            coded |= inside
        stray = np.unique(grey[(grey > 0) & ~coded])
        if stray.size:
            raise LayoutError(f"'{path}' holds grey value(s) {', '.join(map(str, stray[:5]))} outside the organ codes "
                              "(liver 55-70, right kidney 110-135, left kidney 175-200, spleen 240-255)")
    return labels


def _label_image(image, labels: np.ndarray):
    import SimpleITK as sitk

    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    return label


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    if options.splits:
        raise LayoutError("the chaos layout has no splits; leave out --splits")
    report = ConversionReport("chaos", str(source), licence=LICENCE)
    root = _root(source)
    if (root / "CT").is_dir():
        writer = PartWriter(output, "ct", mappings("CT"), "CHAOS CT (liver)", options)
        for case in natural_sorted(p for p in (root / "CT").iterdir() if p.is_dir()):
            image, count = read_dicom_series(case / "DICOM_anon")
            size = image.GetSize()
            labels = read_ground(case / "Ground", count, (size[1], size[0]), "CT")
            writer.add(f"chaos_ct_{case.name}", image, _label_image(image, labels), label_source=case / "Ground")
        writer.finish(report)
    else:
        report.notes.append(f"no CT/ folder in '{root}'")
    if (root / "MR").is_dir():
        writers = {part: PartWriter(output, part, mappings("MRI"), f"CHAOS MR {sequence} {phase or ''}".strip(), options)
                   for part, (sequence, phase) in MR_PARTS.items()}
        for case in natural_sorted(p for p in (root / "MR").iterdir() if p.is_dir()):
            for part, (sequence, phase) in MR_PARTS.items():
                dicom = case / sequence / "DICOM_anon"
                image, count = read_dicom_series(dicom / phase if phase else dicom)
                size = image.GetSize()
                labels = read_ground(case / sequence / "Ground", count, (size[1], size[0]), "MRI")
                writers[part].add(f"chaos_mr_{case.name}", image, _label_image(image, labels),
                                  label_source=case / sequence / "Ground")
        for writer in writers.values():
            writer.finish(report)
    else:
        report.notes.append(f"no MR/ folder in '{root}'")
    if not report.parts:
        raise LayoutError(f"'{root}' holds neither CT/ nor MR/ case folders")
    return report
