"""``duplus phantom``: write one generated case (image + ``.seg.nrrd``) to disk.

    duplus phantom --modality CT --region abdomen --seed 3 -o case.nrrd --label case.seg.nrrd
    duplus phantom --mni --seed 3 -o mni.nrrd --label mni.seg.nrrd
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``phantom`` subcommand to the ``duplus`` command's subparsers."""
    parser = subparsers.add_parser("phantom", help="generate a labelled phantom case (or the MNI152 brain)")
    parser.add_argument("--modality", default="CT", help="CT, MRI, PET or US (default CT)")
    parser.add_argument("--region", default="abdomen", help="brain, head_neck, thorax, abdomen or pelvis")
    parser.add_argument("--seed", type=int, default=0, help="case number; the same seed gives the same case")
    parser.add_argument("--mni", action="store_true", help="write the MNI152 brain case instead (MRI brain)")
    parser.add_argument("--no-augment", action="store_true", help="with --mni: the template as it is")
    parser.add_argument("-o", "--output", required=True, help="image file (.nrrd, .nii.gz, .mha)")
    parser.add_argument("--label", help="segmentation file (.seg.nrrd)")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                        help="voxel spacing in mm: one value or three (i j k); default: the protocol's")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Generate the case and write it; returns the exit status."""
    from ..cli import UsageError
    from ..imageio import SegmentMask, check_output_path, write_image, write_segmentation
    from ..ontology import load_ontology
    from . import generate_phantom, mni152_case

    if args.spacing is not None and len(args.spacing) not in (1, 3):
        raise UsageError("--spacing takes one value or three (i j k)")
    if args.mni and args.spacing is not None and len(set(args.spacing)) > 1:
        raise UsageError("with --mni the template is resampled to one isotropic spacing: give --spacing one value")
    if args.no_augment and not args.mni:
        raise UsageError("--no-augment only applies with --mni (the MNI152 template without augmentation)")
    # both outputs are checked before either is written, so a refused label leaves no new image behind
    for path in (args.output, args.label):
        if path:
            check_output_path(path, args.overwrite)
    if args.mni:
        resolution = args.spacing[0] if args.spacing else 2.0
        phantom = mni152_case(seed=None if args.no_augment else args.seed, augment=not args.no_augment,
                              resolution_mm=resolution)
    else:
        spacing = None if args.spacing is None else (args.spacing * 3 if len(args.spacing) == 1 else args.spacing)
        phantom = generate_phantom(args.modality, args.region, args.seed, spacing=spacing)
    write_image(phantom.image, args.output, overwrite=args.overwrite)
    if args.label:
        ontology = load_ontology()
        segments = [SegmentMask(ontology.structures[key], mask) for key, mask in phantom.labels.items()]
        write_segmentation(segments, phantom.image, args.label, overwrite=args.overwrite)
    shape = "x".join(str(n) for n in phantom.image.shape_ijk)
    spacing_text = "x".join(f"{s:.2f}" for s in phantom.image.spacing)
    print(f"{phantom.modality}/{phantom.region} seed {phantom.seed}: {shape} voxels of {spacing_text} mm, "
          f"{phantom.protocol}; wrote {args.output}" + (f" and {args.label}" if args.label else ""))
    return 0
