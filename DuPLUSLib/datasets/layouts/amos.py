"""AMOS22 (Ji et al., NeurIPS 2022): abdominal CT and MR with 15 organs.

    amos22/
      dataset.json     "labels": {"0": "background", "1": "spleen", ..., "15": "prostate/uterus"}
      imagesTr/amos_0001.nii.gz   labelsTr/amos_0001.nii.gz
      imagesVa/...                labelsVa/...          (the validation split)

Case ids below 500 are CT, 500 and above MR; they become the parts ``ct`` and ``mr``. ``--splits``:
``train`` (imagesTr, the default) and ``val`` (imagesVa).

Left out, because the ontology lacks them in that context (listed under "ignore"): 15
prostate/uterus everywhere (the label is the prostate in men and the uterus in women, and
AMOS does not say which per case in the label); oesophagus (5) and duodenum (13) in MR abdomen;
in each region, the organs of the other region.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .common import (ConversionReport, ConvertOptions, LayoutError, PartWriter, mapping_document,
                     natural_sorted, nifti_stem, require_dir, require_file)

# value -> (the name in AMOS's dataset.json, ontology key or None)
AMOS_LABELS: dict[int, tuple[str, str | None]] = {
    1: ("spleen", "spleen"), 2: ("right kidney", "kidney_right"), 3: ("left kidney", "kidney_left"),
    4: ("gall bladder", "gallbladder"), 5: ("esophagus", "oesophagus"), 6: ("liver", "liver"),
    7: ("stomach", "stomach"), 8: ("arota", "aorta"), 9: ("postcava", "inferior_vena_cava"),
    10: ("pancreas", "pancreas"), 11: ("right adrenal gland", "adrenal_right"),
    12: ("left adrenal gland", "adrenal_left"), 13: ("duodenum", "duodenum"), 14: ("bladder", "bladder"),
    15: ("prostate/uterus", None),
}
MR_FIRST_ID = 500
LICENCE = ("AMOS22: the terms of the AMOS22 release (zenodo.org/records/7262581, amos22.grand-challenge.org); "
           "cite Ji et al., NeurIPS 2022 Datasets and Benchmarks; check them before sharing data or weights")


# Spellings of re-packaged copies (nnU-Net conversions fix AMOS's "arota" and "postcava").
ALIASES = {"arota": {"aorta"}, "postcava": {"inferiorvenacava", "ivc"}, "gallbladder": {"gallbladder"},
           "prostateuterus": {"prostateoruterus", "prostate"}}


def _simple(text: str) -> str:
    return re.sub(r"[^a-z]", "", str(text).lower())


def _names_match(found: str, expected: str) -> bool:
    return _simple(found) == _simple(expected) or _simple(found) in ALIASES.get(_simple(expected), set())


def mappings(modality: str) -> dict[str, dict]:
    from ...ontology import load_ontology

    ontology = load_ontology()
    documents = {}
    prefix = "ct" if modality == "CT" else "mri"
    for region in ("abdomen", "pelvis"):
        valid = set(ontology.structures_of(modality, region))
        labels = {str(v): key for v, (_, key) in AMOS_LABELS.items() if key in valid}
        documents[f"mapping_{prefix}_{region}.json"] = mapping_document(
            f"AMOS22 labels as {modality} {region} structures; ignored: values whose organ the ontology lacks "
            f"in this context (15 prostate/uterus always)", modality, region, labels, range(1, 16))
    return documents


def _check_manifest(source: Path) -> None:
    manifest = require_file(source / "dataset.json", "AMOS22's dataset.json (with its 15 labels)")
    try:
        labels = json.loads(manifest.read_text(encoding="utf-8")).get("labels", {})
    except (json.JSONDecodeError, AttributeError) as error:
        raise LayoutError(f"'{manifest}' is not AMOS22's dataset.json: {error}") from None
    expected = {str(v): name for v, (name, _) in AMOS_LABELS.items()}
    if labels and all(isinstance(v, int) for v in labels.values()):  # nnU-Net v2 style: name -> value
        labels = {str(v): k for k, v in labels.items()}
    found = {str(k): str(v) for k, v in labels.items() if str(k) != "0"}
    if set(found) != set(expected) or not all(_names_match(found[k], expected[k]) for k in expected):
        raise LayoutError(
            f"'{manifest}' does not hold AMOS22's label table (expected values 1-15: "
            f"{', '.join(f'{k} {v}' for k, v in expected.items())}; found {found})")


def _pairs(source: Path, images: str, labels: str) -> list[tuple[str, Path, Path]]:
    image_folder = require_dir(source / images, f"AMOS's {images}/ folder")
    label_folder = require_dir(source / labels, f"AMOS's {labels}/ folder, beside {images}/")
    pairs = []
    for image in natural_sorted(p for p in image_folder.iterdir() if nifti_stem(p)):
        name = nifti_stem(image)
        if not re.fullmatch(r"amos_\d{4}", name):
            raise LayoutError(f"'{image}' is not named like an AMOS case (amos_NNNN.nii.gz)")
        label = label_folder / image.name
        if not label.is_file():
            raise LayoutError(f"'{image}' has no label: '{label}' is missing")
        pairs.append((name, image, label))
    if not pairs:
        raise LayoutError(f"'{image_folder}' holds no amos_NNNN.nii.gz image")
    return pairs


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    report = ConversionReport("amos", str(source), licence=LICENCE)
    _check_manifest(source)
    splits = options.splits or ("train",)
    folders = {"train": ("imagesTr", "labelsTr"), "val": ("imagesVa", "labelsVa")}
    unknown = set(splits) - set(folders)
    if unknown:
        raise LayoutError(f"unknown split(s) {', '.join(sorted(unknown))}; AMOS has train (imagesTr) and val (imagesVa)")
    pairs = [pair for split in splits for pair in _pairs(source, *folders[split])]
    ct = [p for p in pairs if int(p[0][5:]) < MR_FIRST_ID]
    mr = [p for p in pairs if int(p[0][5:]) >= MR_FIRST_ID]
    for name, modality, cases in (("ct", "CT", ct), ("mr", "MRI", mr)):
        if not cases:
            report.notes.append(f"no {modality} case in splits {', '.join(splits)}")
            continue
        writer = PartWriter(output, name, mappings(modality), f"AMOS22 {modality} cases ({', '.join(splits)})", options)
        for case, image, label in cases:
            writer.add(case, image, label)
        writer.finish(report)
    report.notes.append("ignored everywhere: 15 prostate/uterus (no per-case sex in the label); "
                        "MR abdomen also ignores 5 oesophagus and 13 duodenum (not MR structures of the ontology)")
    return report
