"""Segmentations out in the formats other tools read: ``.seg.nrrd``, NIfTI and DICOM SEG.

One entry point, :func:`write_result`, used by ``duplus segment`` (one case or a batch) and meant
for any other caller (a server) that holds a :class:`~DuPLUSLib.inference.SegmentationResult`:

* ``seg.nrrd``: Slicer's segmentation file (:func:`DuPLUSLib.imageio.write_segmentation`);
  overlapping structures on separate layers, names, colours and terminology in the header.
* ``nifti``: one multi-label ``.nii.gz`` and a JSON label table beside it, or with ``split`` one
  ``<structure>.nii.gz`` per structure in a folder, as TotalSegmentator writes them. In the
  multi-label file a voxel holds one label: where structures overlap (a tumour inside its organ)
  the structure asked for later wins; ``split`` keeps each structure whole.
* ``dicom-seg``: a DICOM Segmentation (binary, written with highdicom) for a DICOM series input. It
  references the source series and instances, carries each segment's SNOMED CT codes, a colour
  and the algorithm identification, and lies on the source images' frames.

Every file is written under a temporary name and renamed into place, and every path is checked
before anything is written (:func:`output_files`), so a refused or failed write leaves no part.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import InputImageError, OutputPathError
from .imageio import SegmentMask, VolumeImage, atomic_output, check_output_path, write_segmentation

if TYPE_CHECKING:  # inference imports torch; this module must not need it
    from .inference import SegmentationResult
    from .ontology import Prompt

__all__ = [
    "FORMATS",
    "check_format_input",
    "convert_segmentation",
    "default_suffix",
    "format_for_path",
    "output_files",
    "split_folder",
    "write_dicom_seg",
    "write_nifti",
    "write_result",
]

FORMATS = ("seg.nrrd", "nifti", "dicom-seg")
SUFFIXES = {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "dicom-seg": ".dcm"}
ALGORITHM_NAME = "DuPLUS"


def default_suffix(format: str) -> str:
    """The file ending a batch run gives each case's output in ``format``."""
    _check_format(format)
    return SUFFIXES[format]


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise OutputPathError(f"unknown output format '{format}'; choose one of: {', '.join(FORMATS)}")


def format_for_path(path: str | os.PathLike[str]) -> str:
    """The format an output's ending implies: ``.nii``/``.nii.gz`` NIfTI, ``.dcm`` DICOM SEG, else ``.seg.nrrd``."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".dcm"):
        return "dicom-seg"
    return "seg.nrrd"


def label_table_path(path: str | os.PathLike[str]) -> Path:
    """The JSON label table beside a multi-label NIfTI: ``case.nii.gz`` -> ``case.labels.json``."""
    path = Path(path)
    return path.with_name(_stem(path) + ".labels.json")


def split_folder(path: str | os.PathLike[str]) -> Path:
    """The folder of one-file-per-structure NIfTIs: ``case.nii.gz`` -> ``case/``."""
    path = Path(path)
    return path.with_name(_stem(path))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def structure_file_name(key: str) -> str:
    return f"{key}.nii.gz"


def output_files(path: str | os.PathLike[str], format: str, structure_keys: Sequence[str], split: bool = False) -> list[Path]:
    """Every file :func:`write_result` writes for ``path`` in ``format`` (to check before the work)."""
    _check_format(format)
    path = Path(path)
    if format == "nifti":
        if split:
            folder = split_folder(path)
            return [folder / structure_file_name(key) for key in structure_keys]
        return [path, label_table_path(path)]
    return [path]


def check_output_files(path: str | os.PathLike[str], format: str, structure_keys: Sequence[str], split: bool,
                       overwrite: bool) -> list[Path]:
    """Refuse, before any work, outputs that exist (without ``overwrite``) or cannot be written."""
    files = output_files(path, format, structure_keys, split)
    _check_ending(Path(path), format, split)
    if format == "nifti" and split:
        folder = split_folder(path)
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(f"'{folder}' is a file; --split writes one file per structure into a folder of that name")
        check_output_path(folder if not folder.exists() else files[0], overwrite)
        if folder.exists():
            for file in files:
                check_output_path(file, overwrite)
        return files
    for file in files:
        check_output_path(file, overwrite)
    return files


def _check_ending(path: Path, format: str, split: bool) -> None:
    """A file's ending must not promise another format, and a NIfTI needs its own ending: the
    writer picks the file type from it, so a mismatch would fail after the work or mislabel the file."""
    if format == "nifti" and split:
        return  # the name only names the folder; the files inside end in .nii.gz
    name = path.name.lower()
    named = format_for_path(path) if name.endswith((".nii", ".nii.gz", ".dcm", ".nrrd")) else None
    if format == "nifti" and named != "nifti":
        raise OutputPathError(f"'{path}' must end in .nii.gz or .nii for --format nifti; "
                              f"for example '{path.with_name(_stem(path) + '.nii.gz')}'")
    if named is not None and named != format:
        raise OutputPathError(f"'{path}' ends like a {named} file but --format is {format}; "
                              f"name it '{path.with_name(_stem(path) + SUFFIXES[format])}' or choose --format {named}")


def check_format_input(format: str, image_source: str | os.PathLike[str], is_dicom: bool) -> None:
    """A DICOM SEG needs DICOM source images to reference; refuse anything else up front."""
    _check_format(format)
    if format == "dicom-seg" and not is_dicom:
        raise InputImageError(
            f"--format dicom-seg needs a DICOM series as input: a DICOM SEG references the UIDs of the images "
            f"it was made from, and '{image_source}' is not a DICOM series folder. Choose --format seg.nrrd or "
            "nifti, or give the DICOM series the image came from"
        )


# ------------------------------------------------------------------------------------ writing
def write_result(
    result: "SegmentationResult",
    path: str | os.PathLike[str],
    format: str = "seg.nrrd",
    *,
    split: bool = False,
    overwrite: bool = True,
) -> list[Path]:
    """Write a segmentation result in ``format``; returns the files written (see the module doc)."""
    return write_segments(result.segments, result.reference, path, format, split=split, overwrite=overwrite,
                          prompts=[p.key for p in result.prompts])


def write_segments(
    segments: Sequence[SegmentMask],
    reference: VolumeImage,
    path: str | os.PathLike[str],
    format: str = "seg.nrrd",
    *,
    split: bool = False,
    overwrite: bool = True,
    prompts: Sequence[str] | None = None,
) -> list[Path]:
    """:func:`write_result` for masks and their reference image, without a result object."""
    _check_format(format)
    if format == "seg.nrrd":
        return [write_segmentation(segments, reference, path, overwrite=overwrite)]
    if format == "nifti":
        return write_nifti(segments, reference, path, split=split, overwrite=overwrite, prompts=prompts)
    return [write_dicom_seg(segments, reference, path, overwrite=overwrite)]


def convert_segmentation(
    segmentation: str | os.PathLike[str],
    prompts: Sequence["Prompt"],
    path: str | os.PathLike[str],
    format: str,
    *,
    split: bool = False,
    overwrite: bool = True,
    confidences: dict[str, float | None] | None = None,
    reference: VolumeImage | None = None,
) -> list[Path]:
    """Rewrite a ``.seg.nrrd`` of these prompts as ``format``, in the prompts' order.

    For a segmentation made elsewhere (on a server): the ``.seg.nrrd`` holds the input's full
    grid, so NIfTI needs nothing else; a DICOM SEG needs ``reference``, the source series read
    here, for its UIDs. ``confidences`` (structure key -> mean probability) go into the label table.
    """
    from .imageio import read_segmentation
    from .ontology import load_ontology

    ontology = load_ontology()
    geometry, masks = read_segmentation(segmentation, ontology)
    reference = reference if reference is not None else geometry
    if reference.array.shape != geometry.array.shape:
        raise InputImageError(
            f"the segmentation has {geometry.array.shape} voxels but its image {reference.array.shape}; they do not "
            "belong together: segment this image again"
        )
    missing = [prompt.key for prompt in prompts if prompt.structure not in masks]
    if missing:
        raise InputImageError(f"'{segmentation}' has no segment for {', '.join(missing)}; segment the image again")
    segments = [SegmentMask(ontology.structures[prompt.structure], masks[prompt.structure],
                            (confidences or {}).get(prompt.structure))
                for prompt in prompts]
    return write_segments(segments, reference, path, format, split=split, overwrite=overwrite,
                          prompts=[prompt.key for prompt in prompts])


def _label_entry(segment: SegmentMask, prompt: str | None) -> dict:
    structure = segment.structure
    return {
        "structure": structure.key,
        "name": structure.name,
        "prompt": prompt,
        "color": list(structure.color),
        "terminology": structure.terminology.as_slicer_tag(),
        "confidence": None if segment.confidence is None else round(segment.confidence, 4),
    }


def write_nifti(
    segments: Sequence[SegmentMask],
    reference: VolumeImage,
    path: str | os.PathLike[str],
    *,
    split: bool = False,
    overwrite: bool = True,
    prompts: Sequence[str] | None = None,
) -> list[Path]:
    """NIfTI in the reference geometry: multi-label + ``.labels.json``, or one file per structure."""
    import SimpleITK as sitk

    from .imageio import to_sitk

    if not segments:
        raise ValueError("no segments to write")
    prompts = list(prompts) if prompts is not None else [None] * len(segments)
    path = Path(path)
    if split:
        folder = split_folder(path)
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(f"'{folder}' is a file; --split writes one file per structure into a folder of that name")
        folder.mkdir(exist_ok=True)
        written = []
        for segment in segments:
            target = folder / structure_file_name(segment.structure.key)
            with atomic_output(target, overwrite) as temporary:
                image = to_sitk(reference.with_array(segment.mask.view(np.uint8)))
                sitk.WriteImage(image, str(temporary), useCompression=True, compressionLevel=1)
            written.append(target)
        return written
    if len(segments) > 255:
        raise OutputPathError("a multi-label NIfTI holds at most 255 structures; use --split")
    labels = np.zeros(reference.array.shape, dtype=np.uint8)
    table = {"format": "duplus-labels/1", "background": 0, "labels": {}}
    for value, (segment, prompt) in enumerate(zip(segments, prompts), start=1):
        _paint(labels, segment, value)  # later structures win where they overlap
        table["labels"][str(value)] = _label_entry(segment, prompt)
    table_path = label_table_path(path)
    check_output_path(table_path, overwrite)
    with atomic_output(path, overwrite) as temporary:
        sitk.WriteImage(to_sitk(reference.with_array(labels)), str(temporary), useCompression=True, compressionLevel=1)
    with atomic_output(table_path, overwrite) as temporary:
        temporary.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return [path, table_path]


def read_label_table(path: str | os.PathLike[str]) -> dict[int, dict]:
    """The label table of a multi-label NIfTI written by :func:`write_nifti`: value -> entry."""
    table = json.loads(label_table_path(path).read_text(encoding="utf-8"))
    return {int(value): entry for value, entry in table["labels"].items()}


# ------------------------------------------------------------------------------------ DICOM SEG
def write_dicom_seg(
    segments: Sequence[SegmentMask],
    reference: VolumeImage,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = True,
    series_description: str = "DuPLUS segmentation",
) -> Path:
    """A binary DICOM SEG over ``reference``'s source DICOM series (``reference.dicom_files``).

    Frames are the source images' frames (``mask[k]`` is instance ``dicom_files[k]``: rows are j,
    columns i), so the segmentation lies exactly on the series it references. Empty frames are left
    out; an empty structure keeps its segment description, so a reader sees it was looked for.
    """
    import highdicom as hd
    import pydicom

    from . import __version__

    if not segments:
        raise ValueError("no segments to write")
    files = reference.dicom_files
    check_format_input("dicom-seg", "<image>", bool(files))
    if len(files) != reference.array.shape[0]:
        raise InputImageError(
            f"the image has {reference.array.shape[0]} slices but its DICOM series {len(files)} files; "
            "a DICOM SEG needs one source image per slice"
        )
    try:
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputImageError(f"cannot read the source DICOM series again for the DICOM SEG: {error}") from None
    _check_sources(sources, reference)
    descriptions = [_segment_description(hd, number, segment, __version__)
                    for number, segment in enumerate(segments, start=1)]
    pixels = _segment_pixels(segments, reference.array.shape)
    import warnings

    try:
        with warnings.catch_warnings():  # highdicom's style notes on the source's patient name are not ours to fix
            warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
            seg = _segmentation(hd, sources, pixels, descriptions, series_description)
    except (ValueError, AttributeError) as error:  # highdicom's checks of the source headers
        raise InputImageError(f"cannot write a DICOM SEG for this series: {error}") from None
    del pixels
    with atomic_output(path, overwrite) as temporary:
        seg.save_as(str(temporary))
    return Path(path)


def _segment_pixels(segments: Sequence[SegmentMask], shape: tuple[int, ...]) -> np.ndarray:
    """highdicom's input: a label map of segment numbers when no two segments overlap (one byte a
    voxel), else one stacked binary layer per segment (one byte a voxel per segment: 786 MB for
    ten structures on a 512 x 512 x 300 CT). Both encode the same binary frames."""
    labels = np.zeros(shape, dtype=np.uint8)
    overlap = len(segments) > 255
    for number, segment in enumerate(segments, start=1):
        if overlap:
            break
        overlap = _paint(labels, segment, number)
    # highdicom reads a label map's segments as 1..max: an empty last segment would go undescribed
    if not overlap and labels.max() == len(segments):
        return labels
    del labels
    pixels = np.zeros((*shape, len(segments)), dtype=np.uint8)
    for index, segment in enumerate(segments):
        _paint(pixels[..., index], segment, 1)
    return pixels


def _paint(labels: np.ndarray, segment: SegmentMask, value: int) -> bool:
    """Set ``value`` on the segment's voxels, inside its box only; whether any was already labelled."""
    region = labels[segment.box] if segment.box is not None else labels
    overlap = bool(region[segment.values].any())
    region[segment.values] = value
    return overlap


def _segmentation(hd, sources, pixels, descriptions, series_description):
    from . import __version__

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(sources[0]),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="DuPLUS for 3D Slicer",
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=str(__version__),
        device_serial_number="0",
        series_description=series_description,
        content_label="DUPLUS",
        content_description="text-prompted segmentation (research use only)",
        omit_empty_frames=True,
    )


def _series_number(source) -> int:
    try:
        return int(source.SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000


def _check_sources(sources, reference: VolumeImage) -> None:
    """The pydicom headers must be the volume's slices: same size, same positions in the same order."""
    rows, columns = reference.array.shape[1:]
    step = reference.direction @ np.diag(reference.spacing)
    for k, source in enumerate(sources):
        if int(source.Rows) != rows or int(source.Columns) != columns:
            raise InputImageError(
                f"DICOM file {k + 1} of the series is {source.Columns}x{source.Rows}, the volume {columns}x{rows}"
            )
        position = np.array([float(v) for v in source.ImagePositionPatient])
        expected = np.asarray(reference.origin) + step[:, 2] * k
        if not np.allclose(position, expected, atol=1e-2 + 1e-3 * np.abs(expected).max()):
            raise InputImageError(
                f"DICOM file {k + 1} of the series lies at {position.round(3).tolist()} mm, not where the volume's "
                f"slice {k} is ({expected.round(3).tolist()} mm); the series is irregular and a DICOM SEG cannot "
                "reference it slice by slice"
            )


def _coded(hd, code):
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment_description(hd, number: int, segment: SegmentMask, version: str):
    from pydicom.sr.codedict import codes

    structure = segment.structure
    term = structure.terminology
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=structure.name[:64],
        segmented_property_category=_coded(hd, term.category),
        segmented_property_type=_coded(hd, term.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, version=str(version), family=codes.cid7162.ArtificialIntelligence,
        ),
        tracking_id=structure.key,
        tracking_uid=hd.UID(),
        anatomic_regions=[_coded(hd, term.anatomic_region)] if term.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*structure.color),
    )
    if term.modifier:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(hd, term.modifier)
        ]
    return description
