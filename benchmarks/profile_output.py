"""Resampling back and writing, alone: the stages after inference, profiled without a model.

    python benchmarks/profile_output.py --shape 256x256x150      # the stages' seconds and peak RSS

Ten blob-shaped probability maps on the model's 4 mm grid (sizes from a liver to an adrenal, one
tumour inside the liver) go through exactly what ``Segmenter.segment`` and ``segment_file`` do
after inference: each resampled back onto the input grid, then written as ``.seg.nrrd``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DuPLUSLib.formats import write_segments  # noqa: E402
from DuPLUSLib.imageio import SegmentMask, VolumeImage  # noqa: E402
from DuPLUSLib.ontology import load_ontology  # noqa: E402
from DuPLUSLib.preprocessing import canonical_grid, resample_mask_above  # noqa: E402

# (structure, centre as a fraction of the volume (i, j, k), radii in mm)
BLOBS = [("liver", (0.35, 0.45, 0.5), (90, 75, 80)), ("liver_tumour", (0.33, 0.45, 0.5), (20, 18, 20)),
         ("spleen", (0.72, 0.6, 0.55), (45, 35, 50)), ("kidney_left", (0.7, 0.7, 0.4), (30, 30, 50)),
         ("kidney_right", (0.3, 0.7, 0.4), (30, 30, 50)), ("stomach", (0.62, 0.35, 0.6), (50, 40, 45)),
         ("aorta", (0.52, 0.62, 0.5), (12, 12, 200)), ("pancreas", (0.55, 0.55, 0.45), (50, 15, 15)),
         ("gallbladder", (0.35, 0.35, 0.4), (20, 18, 30)), ("vertebrae", (0.5, 0.8, 0.5), (25, 25, 220))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="256x256x150")
    parser.add_argument("--spacing", default="0.8x0.8x1.5", help="mm of the input grid at 512x512x300 (scaled with shape)")
    parser.add_argument("--format", default="seg.nrrd")
    parser.add_argument("--scatter", type=int, default=3,
                        help="isolated false-positive voxels per structure, anywhere in the volume, as a "
                             "preview model leaves them (they stretch a structure's bounding box)")
    parser.add_argument("--block", type=int, default=8, help="resample_mask_above's block (a huge one: one box)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    spacing = np.array([float(v) for v in args.spacing.split("x")]) * np.array([512, 512, 300]) / np.array(shape)
    image = VolumeImage(np.zeros(shape[::-1], np.int16), tuple(spacing), (-200.0, -200.0, -220.0))
    model = canonical_grid(image, (4.0, 4.0, 4.0))
    extent = np.array(image.shape_ijk) * spacing
    k, j, i = np.meshgrid(*(np.arange(n) * 4.0 + 2.0 for n in model.array.shape), indexing="ij")
    ontology = load_ontology()
    timings = {"postprocessing": 0.0, "writing": 0.0}
    segments = []
    for key, centre, radii in BLOBS:
        c = np.array(centre) * extent
        distance = ((i - c[0]) / radii[0]) ** 2 + ((j - c[1]) / radii[1]) ** 2 + ((k - c[2]) / radii[2]) ** 2
        probability = (1 / (1 + np.exp(np.minimum(8 * (distance - 1), 50)))).astype(np.float32)
        rng = np.random.default_rng(len(segments))
        for _ in range(args.scatter):
            probability[tuple(rng.integers(0, n) for n in probability.shape)] = 0.9
        started = time.perf_counter()
        values, confidence, box = resample_mask_above(model.with_array(probability), image, 0.5, block=args.block)
        timings["postprocessing"] += time.perf_counter() - started
        segments.append(SegmentMask(ontology.structures[key], values, confidence, box, image.array.shape))
    folder = Path(tempfile.mkdtemp(prefix="duplus-profile-"))
    started = time.perf_counter()
    written = write_segments(segments, image, folder / ("out" + {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz"}[args.format]),
                             args.format)
    timings["writing"] = time.perf_counter() - started
    print(json.dumps({"shape": args.shape, "voxels": int(np.prod(shape)), **{k: round(v, 2) for k, v in timings.items()},
                      "found_voxels": sum(s.voxel_count() for s in segments),
                      "output_mb": round(sum(p.stat().st_size for p in written) / 1e6, 2),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
