"""What every layout reader shares: the refusal, the writer of one Decathlon folder, and checks.

A conversion writes one **part** per image kind of the source (``ct``, ``mr``, ``pet``, ``t1``...):
a Decathlon folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``) with one mapping file per
context (modality and region) that its labels annotate. Every label map is read once while
converting and checked against every mapping of its part, so a value the mapping does not name is
refused here, naming the file, and not an hour into a training run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ...ontology import load_ontology
from ...training.decathlon import DatasetError, load_mapping

__all__ = [
    "ConvertOptions",
    "LayoutError",
    "PartWriter",
    "ConversionReport",
    "Grid3",
    "case_key",
    "describe_grid",
    "header",
    "mapping_document",
    "natural_sorted",
    "nifti_stem",
    "read_label",
    "require_dir",
    "require_file",
    "same_grid",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class LayoutError(DatasetError):
    """A source folder that is not in the layout named, or is broken; the message names what is wrong."""


@dataclass(frozen=True)
class ConvertOptions:
    splits: tuple[str, ...] | None = None  # None: the layout's default
    symlink: bool = False  # link images that need no change instead of copying them


@dataclass
class ConversionReport:
    layout: str
    source: str
    parts: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    licence: str = ""

    def to_dict(self) -> dict:
        return {"layout": self.layout, "source": self.source, "parts": self.parts, "notes": self.notes,
                "licence": self.licence}


def natural_sorted(paths: Iterable[Path]) -> list[Path]:
    """Sorted by name with digit runs compared as numbers (img2 before img10)."""
    def key(path: Path):
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]
    return sorted(paths, key=key)


def nifti_stem(path: Path) -> str | None:
    """The name without .nii.gz / .nii, or None for a file that is not NIfTI."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def case_key(name: str) -> str:
    """A case name safe as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"'{path}' does not exist or is not a folder; expected {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"'{path}' is missing; expected {what}")
    return path


def read_label(path: Path):
    """A label map as (SimpleITK image, integer array [k, j, i]); refuses non-integer values."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise LayoutError(f"cannot read label '{path}': {message}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LayoutError(f"label '{path}' is not a 3D single-channel volume")
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise LayoutError(f"label '{path}' holds non-integer values; a label map holds integers")
        array = array.astype(np.int64)
    return image, array


def header(path: Path):
    """Size, spacing, origin and direction of an image file, without reading its voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise LayoutError(f"cannot read image '{path}': {message}") from None
    return reader


class Grid3:
    """The first three axes of an image's or reader's geometry (a 4D image's channels dropped)."""

    def __init__(self, source):
        dimension = len(source.GetSize())
        self.size = tuple(source.GetSize())[:3]
        self.spacing = tuple(source.GetSpacing())[:3]
        self.origin = tuple(source.GetOrigin())[:3]
        direction = np.array(source.GetDirection()).reshape(dimension, dimension)
        self.direction = tuple(direction[:3, :3].ravel())

    def GetSize(self):  # noqa: N802 - the SimpleITK names, so either can be passed
        return self.size

    def GetSpacing(self):  # noqa: N802
        return self.spacing

    def GetOrigin(self):  # noqa: N802
        return self.origin

    def GetDirection(self):  # noqa: N802
        return self.direction


def same_grid(a, b, tolerance: float = 1e-3) -> bool:
    """Whether two SimpleITK images or readers share size, spacing, origin and direction (3D)."""
    a, b = Grid3(a), Grid3(b)
    return (
        tuple(a.GetSize()) == tuple(b.GetSize())
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance * 100)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def describe_grid(a) -> str:
    a = Grid3(a)
    size = "x".join(str(v) for v in a.GetSize())
    spacing = ", ".join(f"{v:.3g}" for v in a.GetSpacing())
    origin = ", ".join(f"{v:.4g}" for v in a.GetOrigin())
    return f"{size} voxels at ({spacing}) mm, origin ({origin})"


class PartWriter:
    """Writes one Decathlon folder of a conversion: cases, dataset.json and the mapping files.

    ``mappings`` maps a file name (``mapping_ct_abdomen.json``) to its document. Each document is
    validated against the ontology before any case is written, and each label map is checked
    against all of them as it is added.
    """

    def __init__(self, root: Path, name: str, mappings: dict[str, dict], description: str,
                 options: ConvertOptions):
        self.folder = root / name
        self.name = name
        self.description = description
        self.options = options
        self.mappings = mappings
        self.training: list[dict] = []
        self.values_seen: set[int] = set()
        (self.folder / "imagesTr").mkdir(parents=True)
        (self.folder / "labelsTr").mkdir(parents=True)
        ontology = load_ontology()
        self.known: dict[str, set[int]] = {}
        for file_name, document in mappings.items():
            path = self.folder / file_name
            path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
            self.known[file_name] = load_mapping(path, ontology).known_values

    # ------------------------------------------------------------------------------ adding cases
    def add(self, case: str, image, label, label_source: Path | None = None) -> None:
        """One case. ``image``: a NIfTI path (copied or linked as it is) or a SimpleITK image.
        ``label``: a NIfTI path or a SimpleITK image; it is checked and written as integers on
        the image's grid. ``label_source`` names the file a built label came from, for messages."""
        import SimpleITK as sitk

        case = case_key(case)
        if isinstance(label, (str, os.PathLike)):
            label_image, array = read_label(Path(label))
            where = Path(label)
        else:
            label_image, array = label, sitk.GetArrayFromImage(label)
            where = label_source or Path(case)
        image_grid = header(Path(image)) if isinstance(image, (str, os.PathLike)) else image
        if not same_grid(image_grid, label_image):
            image_name = image if isinstance(image, (str, os.PathLike)) else f"the image of case {case}"
            raise LayoutError(
                f"label '{where}' does not lie on the voxels of '{image_name}' "
                f"(image {describe_grid(image_grid)}; label {describe_grid(label_image)})"
            )
        self.check_values(array, where)

        image_target = self._write_image(case, image)
        label_target = self.folder / "labelsTr" / f"{case}.nii.gz"
        # Written with the image's own geometry: a header that differs within the tolerance above
        # (float rounding in another tool's writer) must not fail the stricter check at training.
        grid = Grid3(image_grid)
        written = sitk.GetImageFromArray(array.astype(np.uint8 if array.max(initial=0) < 256 and array.min(initial=0) >= 0
                                                      else np.int32))
        written.SetSpacing(grid.spacing)
        written.SetOrigin(grid.origin)
        written.SetDirection(grid.direction)
        sitk.WriteImage(written, str(label_target), True)
        self.training.append({"image": f"./imagesTr/{image_target.name}", "label": f"./labelsTr/{label_target.name}"})

    def check_values(self, array: np.ndarray, where: Path) -> None:
        present = {int(v) for v in np.unique(array)}
        self.values_seen |= present
        for file_name, known in self.known.items():
            unmapped = sorted(present - known)
            if unmapped:
                raise LayoutError(
                    f"label '{where}' holds value(s) {', '.join(map(str, unmapped))} that the mapping "
                    f"'{file_name}' of this layout does not name; the folder is not the release this "
                    "layout reads, or its labels were changed"
                )

    def _write_image(self, case: str, image) -> Path:
        import SimpleITK as sitk

        if isinstance(image, (str, os.PathLike)):
            source = Path(image)
            suffix = ".nii.gz" if source.name.endswith(".nii.gz") else ".nii" if source.name.endswith(".nii") else None
            if suffix is None:
                target = self.folder / "imagesTr" / f"{case}.nii.gz"
                sitk.WriteImage(sitk.ReadImage(str(source)), str(target), True)
                return target
            target = self.folder / "imagesTr" / f"{case}{suffix}"
            if self.options.symlink:
                target.symlink_to(source.resolve())
            else:
                shutil.copyfile(source, target)
            return target
        target = self.folder / "imagesTr" / f"{case}.nii.gz"
        sitk.WriteImage(image, str(target), True)
        return target

    # ---------------------------------------------------------------------------------- finishing
    def finish(self, report: ConversionReport, extra: dict | None = None) -> None:
        if not self.training:
            raise LayoutError(f"no case was found for part '{self.name}'")
        manifest = {
            "name": self.name,
            "description": self.description,
            "tensorImageSize": "3D",
            "numTraining": len(self.training),
            "training": self.training,
            **(extra or {}),
        }
        (self.folder / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        report.parts[self.name] = {
            "folder": self.name,
            "cases": len(self.training),
            "mappings": sorted(self.mappings),
            "label_values": sorted(self.values_seen),
        }


def mapping_document(description: str, modality: str, region: str, labels: dict[str, object],
                     all_values: Iterable[int], channel: int | None = None) -> dict:
    """A mapping document whose 'ignore' lists every value of ``all_values`` that no label names."""
    used: set[int] = set()
    for key, value in labels.items():
        if key.strip().isdigit():
            used.add(int(key))
        else:
            used.update(value if isinstance(value, (list, tuple)) else [value])
    document = {"description": description, "modality": modality, "region": region,
                "labels": {k: (list(v) if isinstance(v, tuple) else v) for k, v in labels.items()},
                "ignore": sorted(set(all_values) - used)}
    if channel is not None:
        document["channel"] = channel
    return document
