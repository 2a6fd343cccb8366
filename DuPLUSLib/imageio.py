"""Volumes in and segmentations out, with geometry kept exactly.

Conventions used throughout the library (stated once, here):

* arrays are indexed ``[k, j, i]`` (slice, row, column), as SimpleITK's ``GetArrayFromImage`` and
  Slicer's ``arrayFromVolume`` return them;
* ``spacing`` is in millimetres and ordered ``(i, j, k)``;
* ``origin`` and ``direction`` are in LPS patient coordinates, as DICOM, ITK, NIfTI readers and
  ``.seg.nrrd`` files use; ``direction[:, a]`` is the unit vector of voxel axis ``a`` (i, j, k).
  The Slicer adapter converts to and from RAS at the MRML boundary and nowhere else.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import InputImageError, OutputPathError, ResourceLimitError, UnknownPromptError
from .ontology import Ontology, Structure

__all__ = [
    "VolumeImage",
    "atomic_output",
    "check_output_path",
    "give_normal_rights",
    "save_tensors",
    "read_image",
    "read_segmentation",
    "write_image",
    "write_segmentation",
    "SegmentMask",
]

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class VolumeImage:
    """A scalar 3D image and where it lies in the patient (LPS, mm)."""

    array: np.ndarray  # [k, j, i]
    spacing: tuple[float, float, float]  # (i, j, k) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS mm
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))  # LPS, columns = i, j, k axes
    metadata: dict[str, str] = field(default_factory=dict)
    # the files of the DICOM series it was read from, in slice (k) order; empty for other sources.
    # A DICOM SEG output references these instances.
    dicom_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return i, j, k

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix taking voxel (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def with_array(self, array: np.ndarray) -> "VolumeImage":
        """The same geometry over another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the image's {self.array.shape}")
        return replace(self, array=array, metadata=dict(self.metadata))

    def same_geometry(self, other: "VolumeImage", tolerance: float = 1e-4) -> bool:
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance * 10)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )


@dataclass
class SegmentMask:
    """One structure's binary mask, with what Slicer shows for it.

    The mask is kept only where it can be non-zero: ``values`` is the mask inside ``box`` (``[k, j, i]``
    slices of a grid of ``grid_shape``). The engine makes segments this way, so ten structures of a
    512 x 512 x 300 CT cost their boxes instead of ten whole grids (786 MB), and writers work inside the
    boxes. A whole-grid mask is passed as ``values`` alone (``box`` None).
    """

    structure: Structure
    values: np.ndarray  # bool [k, j, i]: the whole grid, or only the box
    confidence: float | None = None  # mean probability inside the mask
    box: tuple[slice, slice, slice] | None = None  # where ``values`` lies in the grid; None: the whole grid
    grid_shape: tuple[int, int, int] | None = None  # [k, j, i] of the whole grid; needed with a box

    def __post_init__(self) -> None:
        if self.values.dtype != bool:  # made bool once here, so no reader has to ask
            self.values = self.values.astype(bool)
        if self.box is None:
            self.grid_shape = tuple(self.values.shape)  # type: ignore[assignment]
        elif self.grid_shape is None:
            raise ValueError("a mask kept in a box needs the grid_shape it lies in")
        elif tuple(s.stop - s.start for s in self.box) != self.values.shape:
            raise ValueError(f"a box of {[s.stop - s.start for s in self.box]} voxels holds values of {self.values.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The whole grid's ``[k, j, i]`` shape."""
        return self.grid_shape  # type: ignore[return-value]

    @property
    def mask(self) -> np.ndarray:
        """The mask over the whole grid, bool; a new array of the grid's size when kept in a box."""
        if self.box is None:
            return self.values
        mask = np.zeros(self.grid_shape, dtype=bool)
        mask[self.box] = self.values
        return mask

    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.values))


# ------------------------------------------------------------------------------------ reading
def read_image(path: str | os.PathLike[str], series_uid: str | None = None) -> VolumeImage:
    """Read NRRD, NIfTI, MHA/MHD or a DICOM series folder into a :class:`VolumeImage`.

    A DICOM folder holding several series needs ``series_uid`` (the SeriesInstanceUID); rather
    than guess, the error lists the UIDs to choose from. Raises :class:`InputImageError` for a
    missing file, an unreadable one, a folder with no DICOM series or several, an unknown series,
    and anything that is not one scalar 3D volume.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputImageError(f"input image '{path}' does not exist")
    files: tuple[str, ...] = ()
    if path.is_dir():
        image, files = _read_dicom_folder(path, series_uid)
    elif series_uid is not None:
        raise InputImageError(f"a series UID was given but '{path}' is a file, not a DICOM folder")
    else:
        _refuse_if_too_large(path)
        _refuse_if_truncated(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            if any(marker in str(error) for marker in _NRRD_SHORT_READ):
                raise InputImageError(_truncated(path, _first_line(error))) from None
            raise InputImageError(f"cannot read '{path}' as an image: {_first_line(error)}") from None
    volume = _volume_from_sitk(image, path)
    volume.dicom_files = files
    return volume


def _refuse_if_too_large(path: Path) -> None:
    """Read only the header and refuse a volume that cannot fit in memory, before allocating it.

    Reading allocates the voxels and the engine then needs a float copy on the model grid; a file
    larger than the free memory would otherwise get the process killed by the operating system.
    """
    import psutil
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # unreadable headers are reported by the full read, with its own message
    voxels = float(np.prod([float(n) for n in reader.GetSize()]))
    needed = voxels * (_bytes_per_voxel(reader) + 4)  # the voxels as stored, then as float32
    available = psutil.virtual_memory().available
    if needed > 0.8 * available:
        raise ResourceLimitError(
            f"'{path}' holds {'x'.join(map(str, reader.GetSize()))} voxels, about {needed / 2**30:.1f} GiB to read "
            f"and convert, but only {available / 2**30:.1f} GiB is free; crop or downsample it first"
        )


# teem's words when a .nrrd holds fewer voxel bytes than its header declares (gzip and raw encodings);
# the NRRD reader refuses such a file, the NIfTI reader does not (see _refuse_if_truncated)
_NRRD_SHORT_READ = ("_nrrdEncodingGzip_read: expected", "_nrrdEncodingRaw_read: fread got only")


def _truncated(path: Path, detail: str) -> str:
    return (f"'{path}' is shorter than its header says ({detail}): an interrupted copy or download? "
            "Copy it again")


def _refuse_if_truncated(path: Path) -> None:
    """Refuse a NIfTI file (.nii, .nii.gz) that holds fewer voxel bytes than its header declares.

    ITK's NIfTI reader fills what is missing with zeros and says nothing, so a copy or download cut
    short would be segmented as a scan whose last slices are black. The common path reads only the
    header and the last four bytes: a gzip file ends with its uncompressed length (modulo 2**32),
    and a cut one ends in compressed bytes that spell the expected length by chance once in four
    billion. Only when they differ (a cut file, several gzip members, bytes after the voxels) is the
    file decompressed, counting bytes without keeping them.
    """
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    try:
        with open(path, "rb") as file:
            compressed = file.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as file:
            needed = _nifti_voxels_end(file.read(544))
        if needed is None:
            return
        held = _gzip_length(path, needed) if compressed else path.stat().st_size
    except (OSError, EOFError, ValueError, struct.error, zlib.error):
        return  # a damaged header or gzip stream: the reader reports it with its own message
    if held < needed:
        unit = " once decompressed" if compressed else ""
        raise InputImageError(_truncated(path, f"{held} of the {needed} bytes it declares{unit}"))


def _nifti_voxels_end(header: bytes) -> int | None:
    """Where a single-file NIfTI-1 or NIfTI-2 header says its voxels end (offset plus their bytes);
    None for any other header, left to the reader."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348 and header[344:348] == b"n+1\0":
            dims = struct.unpack(order + "8h", header[40:56])
            bits = struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540 and header[4:8] == b"n+2\0":
            bits = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        sizes = dims[1:dims[0] + 1] if 1 <= dims[0] <= 7 else ()
        if not sizes or bits <= 0 or min(sizes) < 0 or not math.isfinite(offset) or offset < 0:
            return None
        return int(offset) + (math.prod(sizes) * bits + 7) // 8
    return None


def _gzip_length(path: Path, needed: int) -> int:
    """How many bytes the gzip file ``path`` holds uncompressed, counted up to ``needed``."""
    with open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        if int.from_bytes(file.read(4), "little") == needed % 2**32:
            return needed  # the trailer of a complete single-member file
    held = 0
    with gzip.open(path, "rb") as file:
        try:
            while held < needed and (block := file.read1(1 << 20)):
                held += len(block)
        except EOFError:  # the stream stops before its end marker: the file was cut
            pass
    return held


def _bytes_per_voxel(reader) -> int:
    import SimpleITK as sitk

    try:
        probe = sitk.Image([1, 1, 1], reader.GetPixelID(), reader.GetNumberOfComponents())
        return int(sitk.GetArrayViewFromImage(probe).itemsize)
    except RuntimeError:
        return 8  # an exotic pixel type: assume the widest


def _read_dicom_folder(folder: Path, series_uid: str | None = None):
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputImageError(f"'{folder}' holds no DICOM series")
    if series_uid is None and len(series) > 1:
        raise InputImageError(
            f"'{folder}' holds {len(series)} DICOM series; pick one by its SeriesInstanceUID "
            "(--series on the command line): " + ", ".join(series)
        )
    if series_uid is not None and series_uid not in series:
        raise InputImageError(f"'{folder}' holds no DICOM series '{series_uid}'; it holds: " + ", ".join(series))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid or series[0])
    _refuse_irregular_slices(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute(), tuple(str(f) for f in files)
    except RuntimeError as error:
        raise InputImageError(f"cannot read the DICOM series in '{folder}': {_first_line(error)}") from None


# Slice positions are decimal strings that scanners round (often to 0.01 mm), so a regular series
# misses its grid by up to that much; 1% of the slice step covers coarser rounding of thick
# slices. A missing slice makes a step 100% longer, and a gantry tilt moves every slice further
# sideways (5 mm at 1 degree across 300 mm): both lie far outside.
_SLICE_TOLERANCE_MM = 0.01
_SLICE_TOLERANCE_OF_STEP = 0.01
# Direction cosines differing by this turn the slice by 0.06 degrees: a quarter millimetre across a 250 mm field
_ORIENTATION_TOLERANCE = 1e-3
_SLICE_FIX = ("load it in 3D Slicer, whose DICOM reader resamples such series onto a regular grid, "
              "and save it as .nrrd")


def _refuse_irregular_slices(folder: Path, files: Sequence[str]) -> None:
    """Refuse a series whose slices do not lie on one regular grid, from the headers alone.

    SimpleITK's series reader builds the volume from the first slice's orientation and the spacing
    of the slices, and only warns on stderr, which nobody reads, when a slice is missing or the
    steps differ; a gantry-tilted CT, whose slices step obliquely to their plane, it puts on a
    perpendicular grid. Each voxel would then lie elsewhere than the volume says, and a structure
    would be segmented shifted or stretched without a word. ``files`` come sorted along the slice
    normal. One file (a single slice, or a multi-frame image) has no steps to check, nor has a
    series whose files lack positions (the reader decides, as before).
    """
    if len(files) < 2:
        return
    import pydicom

    positions, orientations = [], []
    try:
        for file in files:
            header = pydicom.dcmread(file, stop_before_pixels=True,
                                     specific_tags=["ImagePositionPatient", "ImageOrientationPatient"])
            positions.append([float(v) for v in header.ImagePositionPatient])
            orientations.append([float(v) for v in header.ImageOrientationPatient])
        position, orientation = np.array(positions), np.array(orientations)
    except (AttributeError, TypeError, ValueError, OSError, pydicom.errors.InvalidDicomError):
        return
    if position.shape != (len(files), 3) or orientation.shape != (len(files), 6):
        return
    where = f"the DICOM series in '{folder}'"
    names = [Path(file).name for file in files]
    turned = np.flatnonzero(np.abs(orientation - orientation[0]).max(axis=1) > _ORIENTATION_TOLERANCE)
    if turned.size:
        k = int(turned[0])
        raise InputImageError(
            f"{where} changes its slice orientation at '{names[k]}' ({_numbers(orientation[k])} where the first slice has "
            f"{_numbers(orientation[0])}): its slices are not parallel and no regular grid holds them; {_SLICE_FIX}"
        )
    normal = np.cross(orientation[0, :3], orientation[0, 3:])
    normal /= np.linalg.norm(normal)
    offsets = position - position[0]
    along = offsets @ normal
    steps = np.diff(along)
    step = float(np.median(steps))
    tolerance = max(_SLICE_TOLERANCE_MM, _SLICE_TOLERANCE_OF_STEP * abs(step))
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    off_line = np.flatnonzero(sideways > tolerance)
    if off_line.size:
        k = int(off_line[0])
        tilt = np.degrees(np.arctan2(sideways[k], abs(along[k])))
        raise InputImageError(
            f"{where} was acquired with a gantry tilt of {tilt:.1f} degrees: from '{names[k]}' on, its slices step "
            f"obliquely to their plane ({sideways[k]:.2f} mm sideways over {abs(along[k]):.2f} mm), so the volume is "
            f"sheared and no regular grid holds it; {_SLICE_FIX}"
        )
    if abs(step) <= tolerance:
        return  # most slices at one place (several acquisitions in one series): not a gap; the reader decides
    uneven = np.flatnonzero(np.abs(steps - step) > tolerance)
    if uneven.size:
        k = int(uneven[0])
        missing = round(steps[k] / step) - 1
        between = f"between positions {_numbers(position[k])} and {_numbers(position[k + 1])} mm (before '{names[k + 1]}')"
        if missing >= 1 and abs(steps[k] - (missing + 1) * step) <= (missing + 1) * tolerance:
            what = f"lacks {missing} slice{'s' if missing > 1 else ''} {between}"
        else:
            what = f"has slices unevenly spaced: {abs(steps[k]):.4g} mm apart {between}"
        raise InputImageError(
            f"{where} {what}, where the others are {abs(step):.4g} mm apart; the volume would be stretched there. "
            f"Copy the series again with all its files, or, if it was acquired so, {_SLICE_FIX}"
        )


def _numbers(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _volume_from_sitk(image, source: Path | str) -> VolumeImage:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"'{source}' has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a scalar (grey-level) volume is needed"
        )
    if image.GetDimension() == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise InputImageError(
                f"'{source}' is a 4D image ({'x'.join(map(str, size))}); export one 3D frame first"
            )
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        raise InputImageError(
            f"'{source}' is a 2D image ({'x'.join(map(str, image.GetSize()))}); a 3D volume is needed"
        )
    if image.GetDimension() != 3:
        raise InputImageError(f"'{source}' has {image.GetDimension()} dimensions; a 3D volume is needed")
    array = sitk.GetArrayFromImage(image)
    if min(array.shape) < 2:
        raise InputImageError(
            f"'{source}' is a single slice ({'x'.join(map(str, image.GetSize()))}); a 3D volume is needed"
        )
    metadata = _readable_metadata(image)
    return VolumeImage(
        array=array,
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.array(image.GetDirection()).reshape(3, 3),
        metadata=metadata,
    )


def _readable_metadata(image) -> dict[str, str]:
    """Short header fields, for modality guessing and reports.

    A damaged header can hold keys that are not valid UTF-8; SimpleITK hands them to Python as
    surrogates and then refuses to look them up. Such fields are skipped: they carry nothing usable.
    """
    metadata = {}
    for key in image.GetMetaDataKeys():
        try:
            value = image.GetMetaData(key)
        except (TypeError, RuntimeError, UnicodeError):
            continue
        if len(value) < 256:
            metadata[key] = value
    return metadata


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(("Exception", "/"))]
    return (meaningful or lines or ["unknown error"])[-1]


def to_sitk(image: VolumeImage):
    """The SimpleITK image with the same voxels and geometry."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image.array))
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection(tuple(image.direction.ravel()))
    return out


# ------------------------------------------------------------------------------------ writing
def check_output_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an output that exists (unless ``overwrite``) or whose folder cannot take it."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"'{path}' is a folder; give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputPathError(f"'{path}' already exists; pass --overwrite to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write '{path}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"cannot write '{path}': folder '{folder}' is not writable")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it into place only on success.

    A crash, Ctrl-C or full disk leaves no partial file under the real name.
    """
    path = check_output_path(path, overwrite)
    folder = path.parent
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=folder)
    except OSError as error:  # a read-only mount passes os.access but refuses new files
        raise OutputPathError(f"cannot write '{path}': {error.strerror or error}") from None
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        give_normal_rights(temporary_path)  # mkstemp makes 0600
        _move_into_place(temporary_path, path, overwrite)
    except BaseException as error:
        temporary_path.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputPathError(f"no space left on the device while writing '{path}'; nothing was written") from None
        raise


def _move_into_place(temporary: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished file to its real name.

    Without ``overwrite`` the name is claimed with a hard link, which fails if the name appeared
    meanwhile: of two runs started at once on the same output, the second is refused instead of
    silently replacing the first one's result.
    """
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise OutputPathError(f"'{path}' was written by another run meanwhile; pass --overwrite to replace it") from None
    except OSError:  # file systems without hard links: the check before writing has to do
        os.replace(temporary, path)
        return
    temporary.unlink()


def give_normal_rights(path: str | os.PathLike[str]) -> None:
    """The rights a plain new file or folder gets under the user's umask (0644 / 0755 under 022).

    ``mkstemp``, ``mkdtemp`` and safetensors all make owner-only files (0600 / 0700); a model folder
    on a shared disk must be readable by the colleagues it is shared with, as any file they write.
    """
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_current_umask())


def save_tensors(tensors: dict, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with normal rights: it writes 0600 whatever the umask."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    give_normal_rights(path)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(image: VolumeImage, path: str | os.PathLike[str], overwrite: bool = True) -> Path:
    """Write any format SimpleITK knows by its ending (.nrrd, .nii.gz, .mha)."""
    import SimpleITK as sitk

    with atomic_output(path, overwrite) as temporary:
        # The ending decides the format, so the temporary name keeps it.
        sitk.WriteImage(to_sitk(image), str(temporary), useCompression=True)
    return Path(path)


def pack_layers(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Pack binary masks into as few label layers as their overlaps allow.

    Returns the layers as ``[layer, k, j, i]`` uint8 and, per mask, its ``(layer, label value)``.
    A tumour inside its organ lands on a second layer instead of erasing the organ.
    """
    if not masks:
        raise ValueError("no masks to pack")
    boxed = [_in_tight_box(mask, None) for mask in masks]
    placement = _place_in_layers(boxed)
    return _paint_layers(boxed, placement, masks[0].shape, layer_axis=0), placement


def mask_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest ``[k, j, i]`` slices holding every voxel of a mask; None for an empty one.

    From per-axis projections, so a structure's voxels are never listed (memory in proportion to
    the structure) and untouched pages of a large, mostly empty mask are only read.
    """
    flat_k = mask.any(axis=(1, 2))
    if not flat_k.any():
        return None
    ks = np.flatnonzero(flat_k)
    inner = mask[ks[0]:ks[-1] + 1]
    js = np.flatnonzero(inner.any(axis=(0, 2)))
    is_ = np.flatnonzero(inner[:, js[0]:js[-1] + 1].any(axis=(0, 1)))
    return slice(ks[0], ks[-1] + 1), slice(js[0], js[-1] + 1), slice(is_[0], is_[-1] + 1)


def _shift(box, within):
    """A box found inside ``within`` as slices of the whole volume."""
    if box is None:
        return None
    return tuple(slice(outer.start + inner.start, outer.start + inner.stop) for inner, outer in zip(box, within))


def _in_tight_box(values: np.ndarray, box: tuple[slice, slice, slice] | None):
    """A mask as (its tight box in the whole grid, its values there); (None, None) when empty.
    ``values`` covers ``box`` of the grid, or the whole grid when ``box`` is None."""
    tight = mask_box(values)
    if tight is None:
        return None, None
    inside = values[tight]
    return _shift(tight, box) if box is not None else tight, inside if inside.dtype == bool else inside.astype(bool)


def _place_in_layers(boxed: Sequence[tuple]) -> list[tuple[int, int]]:
    """Each mask's ``(layer, label value)``: the first layer where it overlaps no mask placed
    before it, at most 255 labels a layer. Overlaps are tested inside the boxes only, so a small
    structure in a large CT costs its box, not the volume."""
    placement: list[tuple[int, int]] = []
    on_layer: list[list[tuple]] = []
    for box, inside in boxed:
        for layer, placed in enumerate(on_layer):
            if len(placed) < 255 and not any(_overlap(box, inside, *other) for other in placed):
                break
        else:
            layer = len(on_layer)
            on_layer.append([])
        on_layer[layer].append((box, inside))
        placement.append((layer, len(on_layer[layer])))
    return placement


def _overlap(box, inside, other_box, other_inside) -> bool:
    if box is None or other_box is None:
        return False
    common = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, other_box)]
    if any(c.stop <= c.start for c in common):
        return False
    mine = tuple(slice(c.start - a.start, c.stop - a.start) for c, a in zip(common, box))
    theirs = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(common, other_box))
    return bool(np.any(inside[mine] & other_inside[theirs]))


def _paint_layers(boxed: Sequence[tuple], placement: Sequence[tuple[int, int]], shape: tuple[int, ...],
                  layer_axis: int) -> np.ndarray:
    """The label layers as one uint8 array, the layer axis first (0) or last (-1), written inside
    each mask's box straight into the array that is saved (no stacking copy of whole volumes)."""
    layers = max(layer for layer, _ in placement) + 1
    voxels = np.zeros((layers, *shape) if layer_axis == 0 else (*shape, layers), dtype=np.uint8)
    for (box, inside), (layer, label) in zip(boxed, placement):
        if box is not None:
            np.copyto((voxels[layer] if layer_axis == 0 else voxels[..., layer])[box], np.uint8(label), where=inside)
    return voxels


def write_segmentation(
    segments: Sequence[SegmentMask],
    reference: VolumeImage,
    path: str | os.PathLike[str],
    overwrite: bool = True,
    compression_level: int = 1,
) -> Path:
    """Write a Slicer ``.seg.nrrd`` in ``reference``'s geometry, overlapping segments as layers.

    Each segment carries its name, colour, terminology and extent; an empty mask is kept as an
    empty segment so the user sees that the structure was looked for and not found. The labelmap
    keeps the reference's full grid (what every reader expects); what makes writing a large CT
    fast is gzip level 1 (``compression_level``; a label map compresses about as well as at 9,
    several times faster) and packing the layers inside each structure's box.
    """
    import slicerio

    if not segments:
        raise ValueError("no segments to write")
    for segment in segments:
        if segment.shape != reference.array.shape:
            raise ValueError(
                f"mask of '{segment.structure.key}' has shape {segment.shape}, "
                f"the reference {reference.array.shape}"
            )
    boxed = [_in_tight_box(segment.values, segment.box) for segment in segments]
    boxes = [box for box, _ in boxed]
    placement = _place_in_layers(boxed)
    # nrrd writes [layer, i, j, k] in Fortran order: the transposed view of a C-ordered [k, j, i, layer]
    # array, so its bytes are taken in memory order without a transposing copy
    voxels = _paint_layers(boxed, placement, reference.array.shape, layer_axis=-1)
    del boxed
    voxels = voxels[..., 0].T if voxels.shape[-1] == 1 else voxels.T
    description = {
        "voxels": voxels,
        "ijkToLPS": reference.ijk_to_lps,
        "containedRepresentationNames": ["Binary labelmap"],
        "segments": [
            {
                "id": f"Segment_{segment.structure.key}",
                "name": segment.structure.name,
                "labelValue": label,
                "layer": layer,
                "color": [round(c, 6) for c in segment.structure.color_float],
                "terminology": _slicerio_terminology(segment.structure),
                "extent": _extent(box),
                "tags": {"DuPLUS.Structure": segment.structure.key}
                | ({"DuPLUS.Confidence": f"{segment.confidence:.4f}"} if segment.confidence is not None else {}),
            }
            for segment, (layer, label), box in zip(segments, placement, boxes)
        ],
    }
    with atomic_output(path, overwrite) as temporary:
        slicerio.write_segmentation(str(temporary), description, compression_level=compression_level)
    return Path(path)


def _extent(box: tuple[slice, slice, slice] | None) -> list[int]:
    """Slicer's segment extent, ``i0 i1 j0 j1 k0 k1`` (inclusive); ``0 -1 ...`` for an empty segment."""
    if box is None:
        return [0, -1, 0, -1, 0, -1]
    k, j, i = box
    return [i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1]


def _slicerio_terminology(structure: Structure) -> dict:
    term = structure.terminology
    entry = {
        "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
        "category": [term.category.scheme, term.category.value, term.category.meaning],
        "type": [term.type.scheme, term.type.value, term.type.meaning],
        "anatomicContextName": "Anatomic codes - DICOM master list",
    }
    if term.modifier:
        entry["typeModifier"] = [term.modifier.scheme, term.modifier.value, term.modifier.meaning]
    if term.anatomic_region:
        entry["anatomicRegion"] = [
            term.anatomic_region.scheme,
            term.anatomic_region.value,
            term.anatomic_region.meaning,
        ]
    return entry


def read_segmentation(path: str | os.PathLike[str], ontology: Ontology) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    """Read a ``.seg.nrrd`` back into its geometry and one boolean mask per structure key.

    Segments are matched to the ontology by the ``DuPLUS.Structure`` tag, else by name or synonym.
    """
    import slicerio

    path = Path(path)
    if not path.exists():
        raise InputImageError(f"segmentation '{path}' does not exist")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # slicerio raises plain exceptions for malformed headers
        raise InputImageError(f"cannot read '{path}' as a segmentation: {error}") from None
    try:
        return _segmentation_masks(segmentation, ontology)
    except UnknownPromptError as error:
        raise InputImageError(f"'{path}' holds a segment the ontology does not know: {error}") from None
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, FloatingPointError) as error:
        # a header that parsed but does not describe a usable segmentation (fields missing or inconsistent)
        raise InputImageError(f"'{path}' is not a usable segmentation: {type(error).__name__}: {error}") from None


def _segmentation_masks(segmentation: dict, ontology: Ontology) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim not in (3, 4) or min(voxels.shape[-3:]) < 1:
        raise ValueError(f"voxel array of shape {voxels.shape}")
    layered = voxels.ndim == 4
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    if not np.all(np.isfinite(ijk_to_lps)) or np.any(spacing <= 0):
        raise ValueError("its voxel-to-space matrix is degenerate")
    geometry = VolumeImage(
        array=np.zeros(voxels.shape[-3:][::-1], dtype=np.uint8),
        spacing=tuple(spacing),
        origin=tuple(ijk_to_lps[:3, 3]),
        direction=ijk_to_lps[:3, :3] / spacing,
    )
    masks: dict[str, np.ndarray] = {}
    for segment in segmentation["segments"]:
        key = segment.get("tags", {}).get("DuPLUS.Structure")
        if key is None or key not in ontology.structures:
            key = ontology.structure_key(segment["name"])
        layer = voxels[segment.get("layer", 0)] if layered else voxels
        masks[key] = np.transpose(layer == segment["labelValue"], (2, 1, 0))
    return geometry, masks
