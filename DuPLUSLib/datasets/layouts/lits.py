"""LiTS, the Liver Tumor Segmentation benchmark: volume-N.nii with segmentation-N.nii.

The files may lie in one folder or several (``Training Batch 1/``, ``Training Batch 2/``, or
``volumes/`` and ``segmentations/``); every ``volume-N`` under the source needs its
``segmentation-N``. Labels: 1 liver, 2 tumour. The tumour is part of the liver, so ``liver`` is
values 1 and 2 and ``liver_tumour`` value 2 (as in the Decathlon's Task03_Liver, which is LiTS).
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import ConversionReport, ConvertOptions, LayoutError, PartWriter, mapping_document, nifti_stem

LICENCE = ("LiTS: the non-commercial, share-alike terms of the challenge release (Bilic et al., Medical Image "
           "Analysis 2023); check them: a model trained on it inherits them")


def mappings() -> dict[str, dict]:
    return {"mapping_ct_abdomen.json": mapping_document(
        "LiTS labels: 1 liver, 2 liver tumour (the tumour counts as liver too)", "CT", "abdomen",
        {"liver": [1, 2], "2": "liver_tumour"}, (1, 2))}


def _numbered(source: Path, prefix: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in source.rglob(f"{prefix}-*"):
        stem = nifti_stem(path)
        match = re.fullmatch(rf"{prefix}-(\d+)", stem or "")
        if not match:
            continue
        number = int(match.group(1))
        if number in found:
            raise LayoutError(f"'{path}' and '{found[number]}' are both {prefix} {number}; keep one")
        found[number] = path
    return found


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    if options.splits:
        raise LayoutError("the lits layout has no splits; leave out --splits")
    report = ConversionReport("lits", str(source), licence=LICENCE)
    volumes, segmentations = _numbered(source, "volume"), _numbered(source, "segmentation")
    if not volumes:
        raise LayoutError(f"'{source}' holds no volume-N.nii file (LiTS names its CTs volume-0.nii ... volume-130.nii)")
    missing = sorted(set(volumes) - set(segmentations))
    if missing:
        raise LayoutError(f"'{volumes[missing[0]]}' has no segmentation-{missing[0]}.nii under '{source}'"
                          + (f" (and {len(missing) - 1} more volumes lack theirs)" if len(missing) > 1 else ""))
    orphans = sorted(set(segmentations) - set(volumes))
    if orphans:
        raise LayoutError(f"'{segmentations[orphans[0]]}' has no volume-{orphans[0]}.nii under '{source}'")
    writer = PartWriter(output, "ct", mappings(), "LiTS training CTs", options)
    for number in sorted(volumes):
        writer.add(f"lits_{number:03d}", volumes[number], segmentations[number])
    writer.finish(report)
    return report
