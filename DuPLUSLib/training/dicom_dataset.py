"""Labelled cases stored as DICOM: an image series with DICOM SEG or RTSTRUCT references.

A folder of cases, one subfolder per case (or the folder itself as the one case), each holding
the image series and one or more reference objects, in any file layout::

    cohort/
      mapping.json
      patient-001/  CT slices ... + RS.dcm (RTSTRUCT)   or  seg.dcm (SEG)
      patient-002/  ...

The mapping file names the context and says which reference segments are which structures, by
name (an RTSTRUCT's ROI Name, a SEG's Segment Label or Segment Description)::

    {"modality": "CT", "region": "head_neck",
     "segments": {"GTV-1": "gtvp", "Parotid_L": "parotid_left"},
     "ignore": ["BODY", "External"]}

A segment neither mapped nor ignored is refused with the names to add, as an unmapped Decathlon
label value is. Several segments of one structure are joined. The image read is the series the
references point to; a reference drawn on another series is refused (``dicom_references``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UnknownPromptError
from ..imageio import VolumeImage, read_image
from ..ontology import Ontology, load_ontology
from .decathlon import DatasetError, read_mapping_header

__all__ = ["DicomCase", "ReferenceMapping", "find_dicom_cases", "iter_dicom_cases", "load_reference_mapping"]

REFERENCE_MODALITIES = {"SEG", "RTSTRUCT"}
SKIPPED_MODALITIES = {"RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG"}


@dataclass(frozen=True)
class ReferenceMapping:
    modality: str
    region: str
    segments: dict[str, str]  # lower-cased reference segment name -> structure key
    ignore: frozenset[str]
    source: str

    def structure_of(self, names: list[str]) -> str | None:
        for name in names:
            key = self.segments.get(name.strip().lower())
            if key:
                return key
        return None

    def ignores(self, names: list[str]) -> bool:
        return any(name.strip().lower() in self.ignore for name in names)


@dataclass(frozen=True)
class DicomCase:
    name: str
    series_folder: Path
    series_uid: str
    references: tuple[Path, ...]


def load_reference_mapping(path: str | os.PathLike[str], ontology: Ontology | None = None) -> ReferenceMapping:
    ontology = ontology or load_ontology()
    path = Path(path)
    document, modality, region = read_mapping_header(
        path, ("modality", "region", "segments", "ignore", "description"), ontology,
        " (a DICOM reference mapping names segments by name)")
    segments = document["segments"]
    if not isinstance(segments, dict) or not segments:
        raise DatasetError(f"mapping file '{path}': 'segments' must be a non-empty object of name: structure")
    valid = ontology.structures_of(modality, region)
    resolved = {}
    for name, structure in segments.items():
        try:
            key = ontology.structure_key(str(structure))
        except UnknownPromptError as error:
            raise DatasetError(f"mapping file '{path}': {error}") from None
        if key not in valid:
            raise DatasetError(f"mapping file '{path}': '{structure}' is not a structure of {modality} {region}; "
                               f"choose one of: {', '.join(valid)}")
        resolved[str(name).strip().lower()] = key
    ignore = frozenset(str(n).strip().lower() for n in document.get("ignore", []))
    return ReferenceMapping(modality, region, resolved, ignore, str(path))


def find_dicom_cases(folder: str | os.PathLike[str]) -> list[DicomCase]:
    """One case per subfolder (or the folder itself when its files lie directly in it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder '{folder}' does not exist")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    roots = subfolders or [folder]
    cases = [case for root in roots if (case := _case_in(root)) is not None]
    if not cases:
        raise DatasetError(f"'{folder}' holds no case with both a DICOM image series and a SEG or RTSTRUCT reference")
    return cases


def _case_in(root: Path) -> DicomCase | None:
    import pydicom

    images: dict[str, set[Path]] = {}
    references: list[tuple[Path, set[str]]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (a mapping file, a note): not part of the case
            continue
        modality = str(header.get("Modality", ""))
        if modality in REFERENCE_MODALITIES:
            references.append((path, _referenced_series(header)))
        elif modality not in SKIPPED_MODALITIES and "SeriesInstanceUID" in header:
            images.setdefault(str(header.SeriesInstanceUID), set()).add(path.parent)
    if not images or not references:
        return None
    wanted = set().union(*(series for _, series in references)) & set(images)
    series_uid = sorted(wanted)[0] if wanted else sorted(images)[0]  # none referenced: the reader names both
    folders = images[series_uid]
    if len(folders) != 1:
        raise DatasetError(f"case '{root.name}': the files of series {series_uid} lie in several folders; "
                           "put a series' files in one folder")
    return DicomCase(root.name, folders.pop(), series_uid, tuple(path for path, _ in references))


def _referenced_series(header) -> set[str]:
    series = {str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])}
    for frame in header.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            series |= {str(item.SeriesInstanceUID) for item in study.get("RTReferencedSeriesSequence", [])}
    return series


def load_dicom_case(case: DicomCase, mapping: ReferenceMapping) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    """The case's image and one mask per mapped structure, on the image's grid."""
    from ..dicom_references import read_reference

    image = read_image(case.series_folder, case.series_uid)
    labels: dict[str, np.ndarray] = {}
    unmapped: list[str] = []
    for reference in case.references:
        for segment in read_reference(reference, image):
            key = mapping.structure_of(segment.names)
            if key is None:
                if not mapping.ignores(segment.names):
                    unmapped.append(segment.names[-1] if segment.names else "?")
                continue
            labels[key] = labels[key] | segment.mask if key in labels else segment.mask
    if unmapped:
        raise DatasetError(
            f"case '{case.name}': reference segment(s) {', '.join(repr(n) for n in unmapped)} are not in the mapping "
            f"'{mapping.source}'; map them under \"segments\" or list them under \"ignore\""
        )
    if not labels:
        raise DatasetError(f"case '{case.name}': no reference segment is mapped to a structure")
    return image, labels


def iter_dicom_cases(folder: str | os.PathLike[str], mapping_path: str | os.PathLike[str]
                     ) -> Iterator[tuple[DicomCase, ReferenceMapping, VolumeImage, dict[str, np.ndarray]]]:
    mapping = load_reference_mapping(mapping_path)
    for case in find_dicom_cases(folder):
        image, labels = load_dicom_case(case, mapping)
        yield case, mapping, image, labels
