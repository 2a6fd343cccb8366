"""Reference segmentations stored as DICOM: SEG objects and RT structure sets, onto an image's grid.

Hospitals and public collections keep expert delineations as DICOM SEG (voxel masks) or RTSTRUCT
(planar contours in patient millimetres). ``duplus evaluate`` and ``duplus finetune`` compare with
or learn from them; both need them as boolean masks on the image's own voxels:

* :func:`read_dicom_seg`: each segment resampled (nearest neighbour, in patient space) onto the
  image grid, so a SEG stored on its own frames, or with empty frames left out, lands right;
* :func:`read_rtstruct`: each closed planar contour filled on the image slice it lies on (pixel
  centres inside the polygon; contours of one ROI on one slice combine by the even-odd rule, so an
  inner contour is a hole).

Both refuse a reference drawn on another series or frame of reference, naming both UIDs: its
coordinates would silently land on the wrong anatomy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputImageError
from .imageio import VolumeImage

__all__ = ["ReferenceSegment", "SEG_SOP_CLASS", "RTSTRUCT_SOP_CLASS", "read_dicom_seg", "read_reference",
           "read_rtstruct", "series_identity"]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass
class ReferenceSegment:
    """One delineated structure: its names as the file gives them and its mask on the image grid."""

    label: str  # SEG: Segment Label; RTSTRUCT: ROI Name
    description: str  # SEG: Segment Description (or ''); RTSTRUCT: ROI Description (or '')
    mask: np.ndarray  # bool [k, j, i] on the image's grid
    property_type: tuple[str, str, str] | None = None  # SEG: (scheme, value, meaning)

    @property
    def names(self) -> list[str]:
        """The names a mapping file may use for this segment."""
        return [name for name in (self.label, self.description) if name]


def series_identity(image: VolumeImage) -> tuple[str | None, str | None]:
    """(SeriesInstanceUID, FrameOfReferenceUID) of a volume read from a DICOM series, else Nones."""
    if not image.dicom_files:
        return None, None
    import pydicom

    header = pydicom.dcmread(image.dicom_files[0], stop_before_pixels=True)
    return str(header.get("SeriesInstanceUID", "")) or None, str(header.get("FrameOfReferenceUID", "")) or None


def read_reference(path: str | os.PathLike[str], image: VolumeImage) -> list[ReferenceSegment]:
    """A DICOM SEG or RTSTRUCT file, told apart by its SOP class."""
    import pydicom

    path = Path(path)
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputImageError(f"cannot read reference '{path}' as DICOM: {error}") from None
    sop_class = str(header.get("SOPClassUID", ""))
    if sop_class == SEG_SOP_CLASS:
        return read_dicom_seg(path, image)
    if sop_class == RTSTRUCT_SOP_CLASS:
        return read_rtstruct(path, image)
    raise InputImageError(
        f"'{path}' is a DICOM {header.get('Modality', '?')} object, not a SEG or RTSTRUCT; "
        "a reference must be a DICOM Segmentation or an RT Structure Set"
    )


def _check_same_series(path: Path, kind: str, referenced_series: set[str], frame_of_reference: str | None,
                       image: VolumeImage) -> None:
    series_uid, image_frame = series_identity(image)
    if series_uid is None:
        return  # the image is not DICOM: nothing to compare; geometry alone places the reference
    if referenced_series and series_uid not in referenced_series:
        raise InputImageError(
            f"{kind} '{path}' was drawn on series {', '.join(sorted(referenced_series))}, but the image is series "
            f"{series_uid}; give the series it references (or export the {kind} again on this series)"
        )
    if frame_of_reference and image_frame and frame_of_reference != image_frame:
        raise InputImageError(
            f"{kind} '{path}' lies in frame of reference {frame_of_reference}, the image in {image_frame}; "
            "its coordinates do not apply to this image"
        )


# ------------------------------------------------------------------------------------ DICOM SEG
def read_dicom_seg(path: str | os.PathLike[str], image: VolumeImage) -> list[ReferenceSegment]:
    """Every segment of a DICOM SEG as a mask on ``image``'s grid (see the module doc)."""
    import highdicom as hd

    from .preprocessing import resample_onto

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as error:  # highdicom raises plain errors for malformed objects
        raise InputImageError(f"cannot read '{path}' as a DICOM SEG: {error}") from None
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    _check_same_series(path, "DICOM SEG", referenced, str(seg.get("FrameOfReferenceUID", "")) or None, image)
    segments: list[ReferenceSegment] = []
    numbers = list(seg.get_segment_numbers())
    try:
        volume = seg.get_volume(combine_segments=False, segment_numbers=numbers, dtype=np.uint8)
    except (ValueError, RuntimeError) as error:
        raise InputImageError(f"'{path}' is not a regular 3D segmentation: {error}") from None
    affine = np.asarray(volume.affine, dtype=float)  # (slice, row, column) index -> LPS mm
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = affine[:3, [2, 1, 0]]
    ijk_to_lps[:3, 3] = affine[:3, 3]
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    for index, number in enumerate(numbers):
        description = seg.get_segment_description(number)
        array = np.ascontiguousarray(volume.array[..., index])
        source = VolumeImage(array, tuple(spacing), tuple(ijk_to_lps[:3, 3]), ijk_to_lps[:3, :3] / spacing)
        mask = resample_onto(source, image, "nearest", 0.0, dtype=np.float32) > 0.5
        code = description.SegmentedPropertyTypeCodeSequence[0]
        segments.append(ReferenceSegment(
            label=str(description.SegmentLabel),
            description=str(description.get("SegmentDescription", "") or ""),
            mask=mask,
            property_type=(str(code.CodingSchemeDesignator), str(code.CodeValue), str(code.CodeMeaning)),
        ))
    return segments


# ------------------------------------------------------------------------------------ RTSTRUCT
def read_rtstruct(path: str | os.PathLike[str], image: VolumeImage) -> list[ReferenceSegment]:
    """Every ROI of an RT structure set with closed planar contours, filled on ``image``'s grid."""
    import pydicom

    path = Path(path)
    try:
        document = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputImageError(f"cannot read '{path}' as an RTSTRUCT: {error}") from None
    referenced: set[str] = set()
    frames = document.get("ReferencedFrameOfReferenceSequence", [])
    for frame in frames:
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                referenced.add(str(series.SeriesInstanceUID))
    frame_uid = str(frames[0].FrameOfReferenceUID) if frames and "FrameOfReferenceUID" in frames[0] else None
    _check_same_series(path, "RTSTRUCT", referenced, frame_uid, image)
    rois = {int(roi.ROINumber): roi for roi in document.get("StructureSetROISequence", [])}
    segments: list[ReferenceSegment] = []
    for item in document.get("ROIContourSequence", []):
        roi = rois.get(int(item.ReferencedROINumber))
        name = str(roi.ROIName) if roi is not None else f"ROI {item.ReferencedROINumber}"
        mask = _fill_contours(item.get("ContourSequence", []), image, name, path)
        segments.append(ReferenceSegment(
            label=name, description=str(roi.get("ROIDescription", "") or "") if roi is not None else "", mask=mask,
        ))
    if not segments:
        raise InputImageError(f"RTSTRUCT '{path}' holds no ROI contours")
    return segments


def _fill_contours(contours, image: VolumeImage, name: str, path: Path) -> np.ndarray:
    from matplotlib.path import Path as Polygon

    mask = np.zeros(image.array.shape, dtype=bool)
    lps_to_ijk = np.linalg.inv(image.ijk_to_lps)
    depth, rows, columns = image.array.shape
    for contour in contours:
        if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) not in ("CLOSED_PLANAR",):
            continue  # points and open lines outline no area
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        if len(points) < 3:
            continue
        ijk = (np.c_[points, np.ones(len(points))] @ lps_to_ijk.T)[:, :3]
        k_values = ijk[:, 2]
        if np.ptp(k_values) > 0.1:
            raise InputImageError(
                f"RTSTRUCT '{path}', ROI '{name}': a contour is not in one slice plane of the image "
                f"(it spans {np.ptp(k_values):.2f} slices); the image's slices must be the planes it was drawn on"
            )
        k = int(round(float(k_values.mean())))
        if not 0 <= k < depth:
            continue  # a contour beyond the image's slices
        low = np.clip(np.floor(ijk[:, :2].min(0)).astype(int), 0, [columns - 1, rows - 1])
        high = np.clip(np.ceil(ijk[:, :2].max(0)).astype(int), 0, [columns - 1, rows - 1])
        ii, jj = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1))
        inside = Polygon(ijk[:, :2]).contains_points(np.c_[ii.ravel(), jj.ravel()]).reshape(ii.shape)
        mask[k, low[1]:high[1] + 1, low[0]:high[0] + 1] ^= inside  # even-odd: an inner contour is a hole
    return mask
