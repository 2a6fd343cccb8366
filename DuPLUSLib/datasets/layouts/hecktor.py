"""HECKTOR 2022: head-and-neck PET/CT with primary (GTVp) and nodal (GTVn) tumour volumes.

    hecktor2022_training/
      imagesTr/CHUM-001__CT.nii.gz, CHUM-001__PT.nii.gz
      labelsTr/CHUM-001.nii.gz            1 GTVp, 2 GTVn

CT and PET come on their own grids. Each image is resampled onto its label's grid (linear; CT
padded with -1024 HU, PET with 0), so the label is used as it is and both parts share it:
``ct`` (CT head_neck: gtvp, gtvn) and ``pet`` (PET head_neck: gtvp, gtvn).
"""

from __future__ import annotations

from pathlib import Path

from .common import (ConversionReport, ConvertOptions, LayoutError, PartWriter, mapping_document, natural_sorted,
                     require_dir, same_grid)

LICENCE = ("HECKTOR 2022: distributed by the organisers after signing their data use agreement (non-commercial "
           "research; no redistribution); check it before sharing a model trained on it")
PARTS = {"ct": ("CT", "__CT.nii.gz", -1024.0), "pet": ("PET", "__PT.nii.gz", 0.0)}


def mappings(modality: str) -> dict[str, dict]:
    prefix = modality.lower()
    return {f"mapping_{prefix}_head_neck.json": mapping_document(
        "HECKTOR labels: 1 primary tumour (GTVp), 2 nodal tumour (GTVn)", modality, "head_neck",
        {"1": "gtvp", "2": "gtvn"}, (1, 2))}


def _root(source: Path) -> Path:
    if (source / "imagesTr").is_dir():
        return source
    nested = [p for p in source.iterdir() if p.is_dir() and (p / "imagesTr").is_dir()]
    if len(nested) == 1:
        return nested[0]
    raise LayoutError(f"'{source}' is not a HECKTOR 2022 folder: expected imagesTr/<case>__CT.nii.gz, "
                      "<case>__PT.nii.gz and labelsTr/<case>.nii.gz")


def _on_grid(path: Path, grid, default: float):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    if same_grid(image, grid):
        return path
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    from .common import read_label

    if options.splits:
        raise LayoutError("the hecktor layout has no splits; leave out --splits")
    report = ConversionReport("hecktor", str(source), licence=LICENCE)
    root = _root(source)
    images, labels = root / "imagesTr", require_dir(root / "labelsTr", "HECKTOR's labelsTr/ beside imagesTr/")
    cts = natural_sorted(p for p in images.iterdir() if p.name.endswith("__CT.nii.gz"))
    if not cts:
        raise LayoutError(f"'{images}' holds no <case>__CT.nii.gz (HECKTOR 2022 names its images CHUM-001__CT.nii.gz "
                          "and CHUM-001__PT.nii.gz)")
    cases = []
    for ct in cts:
        case = ct.name[: -len("__CT.nii.gz")]
        pet, label = images / f"{case}__PT.nii.gz", labels / f"{case}.nii.gz"
        for path, what in ((pet, "PET"), (label, "label")):
            if not path.is_file():
                raise LayoutError(f"'{ct}' has no {what}: '{path}' is missing")
        cases.append((case, ct, pet, label))
    writers = {name: PartWriter(output, name, mappings(modality), f"HECKTOR 2022 {modality} on the label grid", options)
               for name, (modality, _, _) in PARTS.items()}
    resampled = 0
    for case, ct, pet, label in cases:
        grid, _ = read_label(label)
        for name, path in (("ct", ct), ("pet", pet)):
            image = _on_grid(path, grid, PARTS[name][2])
            resampled += image is not path
            writers[name].add(case, image, label)
    for writer in writers.values():
        writer.finish(report)
    report.notes.append(f"{resampled} image(s) resampled onto their label's grid")
    return report
