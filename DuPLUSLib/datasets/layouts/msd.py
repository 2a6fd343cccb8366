"""The Medical Segmentation Decathlon: ten TaskNN_Name folders, already in the Decathlon layout.

``duplus train`` reads an MSD folder as it is (``kind: decathlon``); what it lacks is the meaning of
its label values. The ready mapping files live in ``DuPLUSLib/resources/mappings/msd/<task>/``,
one per context (and per channel of the 4D tasks), and can be named directly in a config. This
layout checks a task folder (its dataset.json names the labels and channels this file expects)
and copies or links it, with its mapping files, into the output's ``ct`` or ``mri`` part.

Three tasks label only structures the ontology lacks, so they have no mapping and are refused:
Task02_Heart (left atrium), Task04_Hippocampus (anterior and posterior hippocampus) and
Task10_Colon (colon cancer primaries; the ontology has the colon but no colon tumour).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...training.decathlon import read_dataset_json
from .common import ConversionReport, ConvertOptions, LayoutError, PartWriter

MAPPINGS = Path(__file__).resolve().parents[2] / "resources" / "mappings" / "msd"
LICENCE = "Medical Segmentation Decathlon: CC BY-SA 4.0 (as each task's dataset.json states); share alike"

# task -> (part, modality channels in dataset.json, labels in dataset.json, why there is no mapping)
TASKS: dict[str, tuple[str, dict[str, str], dict[str, str], str | None]] = {
    "Task01_BrainTumour": ("mri", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                           {"1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}, None),
    "Task02_Heart": ("mri", {"0": "MRI"}, {"1": "left atrium"}, "the ontology has no left atrium"),
    "Task03_Liver": ("ct", {"0": "CT"}, {"1": "liver", "2": "cancer"}, None),
    "Task04_Hippocampus": ("mri", {"0": "MRI"}, {"1": "Anterior", "2": "Posterior"}, "the ontology has no hippocampus"),
    "Task05_Prostate": ("mri", {"0": "T2", "1": "ADC"}, {"1": "PZ", "2": "TZ"}, None),
    "Task06_Lung": ("ct", {"0": "CT"}, {"1": "cancer"}, None),
    "Task07_Pancreas": ("ct", {"0": "CT"}, {"1": "pancreas", "2": "cancer"}, None),
    "Task08_HepaticVessel": ("ct", {"0": "CT"}, {"1": "Vessel", "2": "Tumour"}, None),
    "Task09_Spleen": ("ct", {"0": "CT"}, {"1": "spleen"}, None),
    "Task10_Colon": ("ct", {"0": "CT"}, {"1": "colon cancer primaries"}, "the ontology has no colon tumour"),
}


def mapping_files(task: str) -> list[Path]:
    """The ready mapping files of a task (empty for the three tasks the ontology cannot map)."""
    folder = MAPPINGS / task
    return sorted(folder.glob("mapping_*.json")) if folder.is_dir() else []


def _task_of(source: Path, manifest: dict) -> str:
    for text in (source.name, str(manifest.get("name", ""))):
        match = re.search(r"Task0?(\d{2})", text)
        if match:
            for task in TASKS:
                if task.startswith(f"Task{match.group(1)}_"):
                    return task
    raise LayoutError(f"'{source}' is not a Medical Segmentation Decathlon task folder: its name (or dataset.json's "
                      f"'name') should say which task, e.g. Task03_Liver; known: {', '.join(TASKS)}")


def _simple(text: str) -> str:
    return re.sub(r"[^a-z]", "", str(text).lower())


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    if options.splits:
        raise LayoutError("the msd layout has no splits; leave out --splits")
    manifest_path = source / "dataset.json"
    if not manifest_path.is_file():
        raise LayoutError(f"'{source}' has no dataset.json; is it a Medical Segmentation Decathlon task folder?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    task = _task_of(source, manifest)
    part, channels, labels, unmapped = TASKS[task]
    if unmapped:
        raise LayoutError(f"{task} cannot be mapped: {unmapped}, and its labels name nothing else")
    found_labels = {str(k): v for k, v in manifest.get("labels", {}).items() if str(k) != "0"}
    found_channels = {str(k): v for k, v in manifest.get("modality", {}).items()}
    for what, found, expected in (("labels", found_labels, labels), ("modality", found_channels, channels)):
        if {k: _simple(v) for k, v in found.items()} != {k: _simple(v) for k, v in expected.items()}:
            raise LayoutError(f"'{manifest_path}': '{what}' is {found}, but {task} has {expected}; "
                              "the mapping files would misread it")
    entries = read_dataset_json(source)  # every listed file exists
    report = ConversionReport("msd", str(source), licence=LICENCE)
    documents = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in mapping_files(task)}
    writer = PartWriter(output, part, documents, f"{task} of the Medical Segmentation Decathlon", options)
    for entry in entries:
        writer.add(entry.name, entry.image, entry.label)
    writer.finish(report, {"task": task, "modality": channels, "labels": manifest.get("labels", {})})
    report.notes.append(f"{task}: mapping files {', '.join(sorted(documents))}")
    return report
