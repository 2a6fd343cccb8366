"""``duplus evaluate``: per-structure Dice and 95% Hausdorff distance of a model on labelled cases.

Each case goes through the real :class:`~DuPLUSLib.inference.Segmenter` (whole volume, sliding
window, back on the input grid), exactly what a user gets, and is compared with its reference on the
*input* grid: Dice by voxel counts, HD95 with MONAI's metric (spacing-aware, so in millimetres).

Empty masks follow one documented rule, because MONAI returns NaN or inf there:

* reference and prediction both empty: Dice 1 (the model correctly found nothing); HD95 is
  undefined, reported as ``null`` and left out of the HD95 mean;
* exactly one empty: Dice 0; HD95 is infinite, reported as ``null``, left out of the HD95 mean and
  counted in ``hd95_undefined`` so a reader sees how many cases the mean skips.

Only the structures a case *annotates* are scored (partial labels), so a liver-only dataset says
nothing about the spleen.

Data is named by a small spec string, shared with ``duplus finetune``:

* a Decathlon folder (its mapping from ``--mapping``, or ``mapping.json`` inside the folder);
* ``phantom:CT/abdomen,MRI/brain:seeds=1000-1009[:spacing=2][:intensity_scale=1.2...]`` for held-out
  procedural phantoms (``phantom:all:...`` for every context; extra keys are DomainShift fields);
* ``mni152:seeds=0-4`` for the real MNI152 brain under unseen augmentation;
* ``dicom:FOLDER`` for DICOM image series with DICOM SEG or RTSTRUCT references, one case per
  subfolder, and a mapping from reference segment names to structures (``dicom_dataset.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import DuPLUSError
from ..imageio import VolumeImage, atomic_output
from ..ontology import Ontology, Prompt, load_ontology
from .config import DatasetSpec
from .world_evaluation import dice

__all__ = [
    "DataSource",
    "EvaluationCase",
    "evaluate_cases",
    "evaluate_model",
    "markdown_report",
    "parse_data_spec",
    "register",
    "structure_metrics",
    "write_report",
]


@dataclass
class EvaluationCase:
    """One labelled volume: the structures in ``labels`` are the ones it annotates."""

    name: str
    dataset: str
    modality: str
    region: str
    image: VolumeImage
    labels: dict[str, np.ndarray]  # structure key -> bool [k, j, i] on the image's grid


# ------------------------------------------------------------------------------------ metrics
def structure_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict:
    """Dice and HD95 (mm) of one binary mask against its reference; ``spacing`` is ``(i, j, k)`` mm.

    HD95 through MONAI (``compute_hausdorff_distance(percentile=95)``); the empty cases follow the
    module's rule instead of MONAI's NaN/inf.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    predicted, expected = int(prediction.sum()), int(reference.sum())
    entry = {"dice": dice(prediction, reference), "hd95_mm": None, "predicted_voxels": predicted,
             "reference_voxels": expected}
    if predicted == 0 or expected == 0:
        return entry
    y_pred = torch.from_numpy(prediction)[None, None].float()
    y = torch.from_numpy(reference)[None, None].float()
    # tensors are [k, j, i]; MONAI wants the spacing in the tensor's axis order
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internals
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=[float(s) for s in spacing[::-1]]
        )
    value = float(hd.item())
    entry["hd95_mm"] = value if math.isfinite(value) else None
    return entry


def evaluate_cases(
    segmenter,
    cases: Iterable[EvaluationCase],
    progress: Callable[[int, str], None] | None = None,
) -> dict:
    """Segment every case with ``segmenter`` and score it; returns the report (see :func:`summarise`)."""
    records: list[dict] = []
    started = time.perf_counter()
    for index, case in enumerate(cases):
        if progress:
            progress(index, case.name)
        prompts = [Prompt(case.modality, case.region, key) for key in case.labels]
        if not prompts:
            continue
        result = segmenter.segment(case.image, prompts)
        structures = {
            key: structure_metrics(segment.mask, case.labels[key], case.image.spacing)
            for key, segment in zip(case.labels, result.segments)
        }
        records.append(
            {
                "name": case.name,
                "dataset": case.dataset,
                "modality": case.modality,
                "region": case.region,
                "structures": structures,
                "seconds": round(sum(result.timings.values()), 2),
            }
        )
    report = summarise(records)
    report["seconds"] = round(time.perf_counter() - started, 1)
    bundle = segmenter.bundle
    report["model"] = {
        "name": bundle.config.name,
        "path": str(bundle.path) if bundle.path else None,
        "weights_sha256": bundle.config.files.get("weights", {}).get("sha256"),
        "adapter": bundle.config.training.get("adapter"),
    }
    return report


def evaluate_model(bundle, sources: Sequence["DataSource"], device: str = "auto", precision: str = "auto",
                   progress: Callable[[int, str], None] | None = None) -> dict:
    """Evaluate a loaded bundle on data sources: what the command, the experiments and the card use."""
    import itertools

    from ..inference import Segmenter

    segmenter = Segmenter(bundle, device=device, precision=precision)
    report = evaluate_cases(segmenter, itertools.chain.from_iterable(s.cases() for s in sources), progress)
    report["data"] = [s.describe() for s in sources]
    return report


def summarise(records: list[dict]) -> dict:
    """Per-case records -> means per (dataset, modality, structure) and per (dataset, modality)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        for key, entry in record["structures"].items():
            groups.setdefault((record["dataset"], record["modality"], key), []).append(entry)
    rows = [_aggregate({"dataset": d, "modality": m, "structure": s}, entries)
            for (d, m, s), entries in sorted(groups.items())]
    by_context: dict[tuple[str, str], list[dict]] = {}
    for (d, m, _), entries in groups.items():
        by_context.setdefault((d, m), []).extend(entries)
    datasets = [
        _aggregate({"dataset": d, "modality": m,
                    "cases": sum(1 for r in records if (r["dataset"], r["modality"]) == (d, m))}, entries)
        for (d, m), entries in sorted(by_context.items())
    ]
    overall = _aggregate({"cases": len(records)}, [e for entries in groups.values() for e in entries])
    # the headline is the mean over structures, so one large organ does not hide a missed small one
    overall["mean_structure_dice"] = _round(np.mean([r["dice_mean"] for r in rows])) if rows else None
    return {
        "rules": "Dice: both empty = 1, one empty = 0. HD95 in mm on the input grid; null where a mask "
                 "is empty, excluded from hd95_mean_mm and counted in hd95_undefined.",
        "overall": overall,
        "by_dataset": datasets,
        "by_structure": rows,
        "cases": records,
    }


def _aggregate(head: dict, entries: list[dict]) -> dict:
    dice = [e["dice"] for e in entries]
    hd = [e["hd95_mm"] for e in entries if e["hd95_mm"] is not None]
    return head | {
        "n": len(entries),
        "dice_mean": _round(np.mean(dice)) if dice else None,
        "dice_std": _round(np.std(dice)) if dice else None,
        "hd95_mean_mm": _round(np.mean(hd)) if hd else None,
        "hd95_undefined": len(entries) - len(hd),
    }


def _round(value: float) -> float:
    return round(float(value), 4)


def markdown_report(report: dict, title: str = "Evaluation") -> str:
    """The report as markdown tables: one row per structure, then one per dataset and modality."""

    def fmt(value, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"## {title}", ""]
    model = report.get("model", {})
    if model:
        lines += [f"Model: `{model.get('name')}`" + (f" + adapter `{model['adapter']['name']}`"
                                                     if model.get("adapter") else ""), ""]
    lines += ["| dataset | modality | structure | n | Dice | ± | HD95 (mm) | HD95 undefined |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in report["by_structure"]:
        lines.append(f"| {row['dataset']} | {row['modality']} | {row['structure']} | {row['n']} | "
                     f"{fmt(row['dice_mean'])} | {fmt(row['dice_std'])} | {fmt(row['hd95_mean_mm'], 1)} | "
                     f"{row['hd95_undefined']} |")
    lines += ["", "| dataset | modality | cases | Dice | HD95 (mm) |", "|---|---|---:|---:|---:|"]
    for row in report["by_dataset"]:
        lines.append(f"| {row['dataset']} | {row['modality']} | {row['cases']} | {fmt(row['dice_mean'])} | "
                     f"{fmt(row['hd95_mean_mm'], 1)} |")
    overall = report["overall"]
    lines += ["", f"Mean Dice over structures: {fmt(overall.get('mean_structure_dice'))} "
                  f"({overall['cases']} cases). {report['rules']}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- data specs
class DataSpecError(DuPLUSError, ValueError):
    """A ``--data`` argument that names no dataset this library can read."""


@dataclass
class DataSource:
    """Labelled cases named by a ``--data`` spec; yields them for evaluation or as training specs."""

    kind: str  # "phantom", "mni152", "decathlon" or "dicom"
    label: str  # the dataset name reports use
    seeds: list[int] = field(default_factory=list)
    contexts: list[tuple[str, str]] = field(default_factory=list)
    path: str | None = None
    mapping: str | None = None
    spacing: float | None = None  # phantoms: isotropic mm instead of the generator's realistic spacing
    domain_shift: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """The spec string that names this data again."""
        if self.kind == "decathlon":
            return f"{self.path} (mapping {self.mapping})"
        if self.kind == "dicom":
            return f"dicom:{self.path} (mapping {self.mapping})"
        head = self.kind + (":" + ",".join(f"{m}/{r}" for m, r in self.contexts) if self.kind == "phantom" else "")
        extra = ([f"spacing={self.spacing:g}"] if self.spacing else []) + [f"{k}={v:g}" for k, v in self.domain_shift.items()]
        return ":".join([head, f"seeds={self.seeds[0]}-{self.seeds[-1]}", *extra])

    def cases(self) -> Iterator[EvaluationCase]:
        """The cases, one at a time (a Decathlon folder can be larger than memory)."""
        if self.kind == "dicom":
            from .dicom_dataset import iter_dicom_cases

            for case, mapping, image, labels in iter_dicom_cases(self.path, self.mapping):  # type: ignore[arg-type]
                yield EvaluationCase(case.name, self.label, mapping.modality, mapping.region, image, labels)
        elif self.kind == "decathlon":
            from .decathlon import iter_decathlon_cases

            for entry, mapping, image, labels in iter_decathlon_cases(self.path, self.mapping):  # type: ignore[arg-type]
                yield EvaluationCase(entry.name, self.label, mapping.modality, mapping.region, image, labels)
        elif self.kind == "mni152":
            from ..phantoms import mni152_case

            for seed in self.seeds:
                case = mni152_case(seed=seed, augment=True)
                yield EvaluationCase(f"mni152-{seed}", self.label, "MRI", "brain", case.image, dict(case.labels))
        else:
            from ..phantoms import generate_phantom

            kwargs: dict = {}
            if self.spacing:
                kwargs["spacing"] = (self.spacing,) * 3
            if self.domain_shift:
                from ..phantoms import DomainShift

                kwargs["domain"] = DomainShift(**self.domain_shift)
            for modality, region in self.contexts:
                for seed in self.seeds:
                    phantom = generate_phantom(modality, region, seed, **kwargs)
                    yield EvaluationCase(f"{modality}-{region}-{seed}", self.label, modality, region,
                                         phantom.image, dict(phantom.labels))

    def dataset_spec(self) -> DatasetSpec:
        """The same data as a training ``DatasetSpec`` (phantom seeds as ``seed_offset + case``, seed 0)."""
        if self.kind == "decathlon":
            return DatasetSpec(kind="decathlon", path=self.path, mapping=self.mapping)
        if self.kind == "dicom":
            raise DataSpecError("training configs read Decathlon folders; DICOM references work with "
                                "duplus evaluate and duplus finetune")
        start = min(self.seeds)
        if self.seeds != list(range(start, start + len(self.seeds))):
            raise DataSpecError("training data needs a contiguous seed range, e.g. seeds=1000-1004")
        if self.kind == "mni152":
            return DatasetSpec(kind="mni152", cases=len(self.seeds), seed_offset=start)
        return DatasetSpec(kind="phantom", cases=len(self.seeds), seed_offset=start,
                           contexts=[f"{m}/{r}" for m, r in self.contexts],
                           domain_shift=dict(self.domain_shift) or None)


def parse_data_spec(text: str, mapping: str | None = None, ontology: Ontology | None = None) -> DataSource:
    """Read a ``--data`` argument (see the module docstring); raises :class:`DataSpecError`."""
    ontology = ontology or load_ontology()
    head, _, rest = text.partition(":")
    if head in ("phantom", "mni152"):
        parts = rest.split(":") if rest else []
        contexts: list[tuple[str, str]] = []
        if head == "phantom":
            if not parts or "=" in parts[0]:
                raise DataSpecError(f"'{text}': write phantom:MODALITY/region[,...]:seeds=A-B, e.g. "
                                    "phantom:CT/abdomen:seeds=1000-1009")
            contexts = _parse_contexts(parts.pop(0), ontology, text)
        options = dict(_key_value(p, text) for p in parts)
        if "seeds" not in options:
            raise DataSpecError(f"'{text}' names no seeds; add :seeds=A-B (held-out seeds, e.g. 1000-1009)")
        seeds = _parse_seeds(options.pop("seeds"), text)
        spacing = float(options.pop("spacing")) if "spacing" in options else None
        shift = {k: float(v) for k, v in options.items()}
        _check_shift(shift, text)
        if head == "mni152" and (shift or spacing):
            raise DataSpecError(f"'{text}': mni152 takes only seeds")
        return DataSource(head, head, seeds=seeds, contexts=contexts, spacing=spacing, domain_shift=shift)
    if head == "dicom":
        folder = Path(rest)
        if not folder.is_dir():
            raise DataSpecError(f"'{text}': '{rest}' is not a folder of DICOM cases")
        mapping_path = Path(mapping) if mapping else folder / "mapping.json"
        if not mapping_path.is_file():
            raise DataSpecError(f"no mapping for '{folder}': pass --mapping FILE or put mapping.json in the folder "
                                '(e.g. {"modality": "CT", "region": "head_neck", "segments": {"GTV-1": "gtvp"}})')
        from .dicom_dataset import load_reference_mapping

        load_reference_mapping(mapping_path, ontology)  # a typo fails now, not after the model loads
        return DataSource("dicom", folder.name, path=str(folder), mapping=str(mapping_path))
    folder = Path(text[len("decathlon:"):] if text.startswith("decathlon:") else text)
    if not folder.is_dir():
        raise DataSpecError(
            f"'{text}' is neither a dataset folder nor a phantom:/mni152: spec; e.g. /data/Task03_Liver "
            "with --mapping map.json, or phantom:CT/abdomen:seeds=1000-1009"
        )
    mapping_path = Path(mapping) if mapping else folder / "mapping.json"
    if not mapping_path.is_file():
        raise DataSpecError(f"no mapping for '{folder}': pass --mapping FILE or put mapping.json in the folder")
    return DataSource("decathlon", folder.name, path=str(folder), mapping=str(mapping_path))


def _check_shift(shift: dict[str, float], spec: str) -> None:
    if not shift:
        return
    from dataclasses import fields

    from ..phantoms import DomainShift

    known = {f.name for f in fields(DomainShift)}
    unknown = set(shift) - known
    if unknown:
        raise DataSpecError(f"'{spec}': unknown option(s) {', '.join(sorted(unknown))}; "
                            f"known: seeds, spacing, {', '.join(sorted(known))}")


def _parse_contexts(text: str, ontology: Ontology, spec: str) -> list[tuple[str, str]]:
    if text == "all":
        return ontology.contexts()
    contexts = []
    for item in text.split(","):
        modality, _, region = item.partition("/")
        if not region:
            raise DataSpecError(f"'{spec}': context '{item}' must be MODALITY/region, e.g. CT/abdomen")
        try:
            m = ontology.modality_key(modality)
            contexts.append((m, ontology.region_key(region, m)))
        except DuPLUSError as error:
            raise DataSpecError(f"'{spec}': {error}") from None
    return contexts


def _key_value(part: str, spec: str) -> tuple[str, str]:
    key, sep, value = part.partition("=")
    if not sep:
        raise DataSpecError(f"'{spec}': '{part}' must be key=value")
    return key.strip(), value.strip()


def _parse_seeds(text: str, spec: str) -> list[int]:
    seeds: list[int] = []
    try:
        for item in text.split(","):
            low, _, high = item.partition("-")
            seeds.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise DataSpecError(f"'{spec}': seeds must look like 1000-1009 or 3,5,7") from None
    if not seeds:
        raise DataSpecError(f"'{spec}': empty seed range")
    return seeds


# ------------------------------------------------------------------------------------ command
def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data and --mapping, as every command that reads labelled data takes them (evaluate, finetune)."""
    parser.add_argument("--data", action="append", required=True,
                        help="a Decathlon folder, dicom:FOLDER (DICOM series + SEG/RTSTRUCT references), "
                             "phantom:CT/abdomen:seeds=1000-1009 or mni152:seeds=0-4; repeatable")
    parser.add_argument("--mapping", help="label mapping JSON of the Decathlon folder (default: FOLDER/mapping.json)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="Dice and HD95 of a model on labelled data (JSON + markdown)")
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--adapter", help="adapter folder from duplus finetune, applied on top of --model")
    add_data_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="report JSON")
    parser.add_argument("--markdown", help="also write the tables as markdown here")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import sys

    from ..imageio import check_output_path
    from .adapters import load_bundle_with_adapter

    check_output_path(args.output, overwrite=True)
    if args.markdown:
        check_output_path(args.markdown, overwrite=True)
    sources = [parse_data_spec(d, args.mapping) for d in args.data]
    bundle = load_bundle_with_adapter(args.model, args.adapter)

    def progress(index: int, name: str) -> None:
        print(f"evaluating case {index + 1}: {name}", file=sys.stderr, flush=True)

    report = evaluate_model(bundle, sources, args.device, args.precision, progress)
    write_report(report, args.output, args.markdown)
    print(markdown_report(report))
    return 0


def write_report(report: dict, json_path: str | os.PathLike[str], markdown_path: str | os.PathLike[str] | None = None,
                 title: str = "Evaluation") -> None:
    """Write a report as JSON (and markdown), atomically; what the command and the experiments use."""
    with atomic_output(json_path) as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if markdown_path:
        with atomic_output(markdown_path) as temporary:
            temporary.write_text(markdown_report(report, title), encoding="utf-8")
