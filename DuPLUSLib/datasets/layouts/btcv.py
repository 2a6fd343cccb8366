"""BTCV, Multi-Atlas Labeling Beyond the Cranial Vault, abdomen: 30 labelled CTs, 13 organs.

    Abdomen/RawData/Training/img/img0001.nii.gz
    Abdomen/RawData/Training/label/label0001.nii.gz

The source may be any of ``Abdomen/``, ``RawData/``, ``Training/`` or the folder holding img/ and
label/. Labels: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 oesophagus, 6 liver,
7 stomach, 8 aorta, 9 inferior vena cava, 10 portal and splenic vein, 11 pancreas, 12 right
adrenal gland, 13 left adrenal gland; every one is a CT abdomen structure of the ontology.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import ConversionReport, ConvertOptions, LayoutError, PartWriter, mapping_document, natural_sorted, nifti_stem

BTCV_LABELS = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "oesophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior_vena_cava", 10: "portal_splenic_vein", 11: "pancreas",
    12: "adrenal_right", 13: "adrenal_left",
}
LICENCE = ("BTCV (Synapse syn3193805): research use under the challenge's data use terms; registration "
           "required, redistribution not allowed: check the terms before sharing data or weights")


def mappings() -> dict[str, dict]:
    return {"mapping_ct_abdomen.json": mapping_document(
        "BTCV abdomen labels (13 organs) as CT abdomen structures", "CT", "abdomen",
        {str(v): key for v, key in BTCV_LABELS.items()}, BTCV_LABELS)}


def _training_folder(source: Path) -> Path:
    for candidate in (source, source / "Training", source / "RawData" / "Training",
                      source / "Abdomen" / "RawData" / "Training"):
        if (candidate / "img").is_dir() and (candidate / "label").is_dir():
            return candidate
    raise LayoutError(
        f"'{source}' is not a BTCV abdomen folder: expected img/ and label/ in it or in Training/, "
        "RawData/Training/ or Abdomen/RawData/Training/")


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    if options.splits:
        raise LayoutError("the btcv layout has no splits; leave out --splits")
    report = ConversionReport("btcv", str(source), licence=LICENCE)
    folder = _training_folder(source)
    images = natural_sorted(p for p in (folder / "img").iterdir() if nifti_stem(p))
    if not images:
        raise LayoutError(f"'{folder / 'img'}' holds no imgNNNN.nii.gz")
    writer = PartWriter(output, "ct", mappings(), "BTCV abdomen training CTs", options)
    for image in images:
        match = re.fullmatch(r"img(\d+)", nifti_stem(image))
        if not match:
            raise LayoutError(f"'{image}' is not named like a BTCV image (imgNNNN.nii.gz)")
        label = folder / "label" / image.name.replace("img", "label", 1)
        if not label.is_file():
            raise LayoutError(f"'{image}' has no label: '{label}' is missing")
        writer.add(f"btcv_{match.group(1)}", image, label)
    writer.finish(report)
    return report
