#!/usr/bin/env python
"""Held-out synthetic cases of the real anatomy: the validation set for choosing a default model.

The reserved real scans are for reporting only, so a model is chosen on data it was allowed to
see the source of but never saw itself: the training CT's label maps deformed, resized, cropped
and painted with seeds no training case used, as CT and as MRI (``seed >= 90000``). Their limit:
one patient's anatomy, so they measure robustness to pose, shape, field of view and contrast, not
to other patients. ``--contrast-phases`` writes CT sets (``ct_REGION_phases``) whose cases draw a
native, arterial or portal-venous phase, as training with ``contrast_phases: true`` does;
``--in-plane-crops`` writes ``_fov`` sets in which every case has an in-plane field of view narrower
than the body, of the widths training with ``in_plane_crops: true`` draws for some of its cases;
``--label-contrasts`` writes MRI sets (``mri_REGION_labels``) in which every label has its own random
intensity, as training with ``label_contrasts: true`` paints some of its MRI cases; ``--organ-resizes``
writes ``_organs`` sets whose organs grow or shrink by millimetres, as ``organ_resizes: true`` draws.

    python experiments/synthetic_holdout.py --data data/ts-example-ct -o runs/synthetic_holdout
    python experiments/synthetic_holdout.py --data data/ts-example-ct --contrast-phases -o runs/synthetic_holdout
    python experiments/synthetic_holdout.py --data data/ts-example-ct --in-plane-crops -o runs/synthetic_holdout
    python experiments/synthetic_holdout.py --data data/ts-example-ct --label-contrasts -o runs/synthetic_holdout
    python experiments/synthetic_holdout.py --data data/ts-example-ct --organ-resizes -o runs/synthetic_holdout
    duplus evaluate --model DIR --data runs/synthetic_holdout/ct_abdomen -o ct.json --markdown ct.md
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HOLDOUT_SEED = 90_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the training CT's Decathlon folder (duplus data get)")
    parser.add_argument("--cases", type=int, default=3, help="cases per modality and region")
    parser.add_argument("--contrast-phases", action="store_true", help="CT only, in drawn contrast phases")
    parser.add_argument("--in-plane-crops", action="store_true", help="every case with a narrower in-plane field of view")
    parser.add_argument("--label-contrasts", action="store_true", help="MRI only, every label at its own random intensity")
    parser.add_argument("--organ-resizes", action="store_true", help="organs grown or shrunk by millimetres")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    from DuPLUSLib.ontology import load_ontology
    from DuPLUSLib.training.decathlon import write_decathlon_dataset
    from DuPLUSLib.synthesis import SynthesisSettings, synthesise
    from DuPLUSLib.training.synthetic import _source

    ontology = load_ontology()
    data = Path(args.data).resolve()
    if args.contrast_phases and args.label_contrasts:
        parser.error("--contrast-phases writes CT sets and --label-contrasts MRI sets: give one of them")
    settings = SynthesisSettings(contrast_phases=args.contrast_phases, in_plane_crops=args.in_plane_crops,
                                 label_contrasts=args.label_contrasts, label_contrast_probability=1.0,
                                 organ_resizes=args.organ_resizes)
    if args.in_plane_crops:
        settings = replace(settings, spatial=replace(settings.spatial, in_plane_probability=1.0))
    suffix = "".join(f"_{tag}" for tag in settings.tags())
    modalities = ("CT",) if args.contrast_phases else ("MRI",) if args.label_contrasts else ("CT", "MRI")
    for modality in modalities:
        for mapping in sorted(data.glob("mapping_ct_*.json")):
            region = json.loads(mapping.read_text(encoding="utf-8"))["region"]
            if region not in ontology.regions_of(modality):
                continue
            source = _source(str(data), str(mapping), 0)
            keys = [k for k in source.structures if k in ontology.structures_of(modality, region)]
            triples = []
            for case in range(args.cases):
                image, masks = synthesise(source, modality, HOLDOUT_SEED + case, keys, settings)
                labels = np.zeros(image.array.shape, np.uint8)
                for value, key in enumerate(keys, start=1):
                    labels[masks[key]] = value
                triples.append((f"holdout_{modality.lower()}_{region}{suffix}_{case}", image, labels))
            folder = Path(args.output) / f"{modality.lower()}_{region}{suffix}"
            write_decathlon_dataset(folder, triples, {"modality": modality, "region": region,
                                                      "labels": {str(v): k for v, k in enumerate(keys, start=1)}})
            print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
