"""Datasets in the Medical Segmentation Decathlon layout, mapped onto the ontology.

A Decathlon folder holds ``dataset.json``, ``imagesTr/`` and ``labelsTr/``::

    Task03_Liver/
      dataset.json      {"training": [{"image": "./imagesTr/liver_0.nii.gz",
                                       "label": "./labelsTr/liver_0.nii.gz"}, ...]}
      imagesTr/  labelsTr/

Its label values mean nothing to DuPLUS until a small **mapping file** says which structures they
are, in which modality and region::

    {"modality": "CT", "region": "abdomen",
     "labels": {"1": "liver", "2": ["liver", "liver_tumour"]},
     "ignore": [3],
     "channel": 0}

``labels`` is read in either direction, per key: a label *value* (``"2"``) names one structure or
a list of them, or a *structure* (``"liver"``) names one value or a list (``"liver": [1, 2]``).
Structure names may be keys, display names or synonyms of the ontology. A structure that is the
union of several values is how a tumour also counts as its organ ("liver" = values 1 and 2).
``ignore`` lists values present in the data that stand for nothing we segment; ``channel`` picks
one channel of a 4D (multi-sequence) image, as in the Decathlon's brain and prostate tasks.

Partial labels: a case *annotates* exactly the mapped structures (an empty mask is a real
negative); every other structure of the ontology is unknown for it and carries no loss.

Everything that can be checked is checked when the dataset is first named (training start, the
``finetune`` and ``evaluate`` commands), so a typo fails in a second and not an hour into a run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DuPLUSError, UnknownPromptError
from ..imageio import VolumeImage
from ..ontology import Ontology, load_ontology
from .config import DatasetSpec
from .config import CaseSpec

__all__ = [
    "DatasetError",
    "DecathlonEntry",
    "LabelMapping",
    "decathlon_case_specs",
    "iter_decathlon_cases",
    "load_decathlon_case",
    "load_entry",
    "load_mapping",
    "read_dataset_json",
    "toy_case",
    "write_decathlon_dataset",
    "write_toy_dataset",
]


class DatasetError(DuPLUSError, ValueError):
    """A dataset folder, mapping or case that cannot be used; the message names the file and value."""


@dataclass(frozen=True)
class LabelMapping:
    """What a dataset's label values mean: structure key -> the label values that make it up."""

    modality: str
    region: str
    structures: dict[str, tuple[int, ...]]
    ignore: tuple[int, ...] = ()
    channel: int | None = None
    source: str = "<mapping>"
    # ignored values that are known anatomy (structure key -> values): never trained on, but
    # synthesis paints them as what they are (an unannotated iliac artery is arterial blood)
    unannotated: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def known_values(self) -> set[int]:
        return {v for values in self.structures.values() for v in values} | set(self.ignore) | {0}

    def masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """One boolean mask per mapped structure (the structures this case annotates)."""
        return {key: np.isin(labels, values) for key, values in self.structures.items()}


@dataclass(frozen=True)
class DecathlonEntry:
    """One training pair of dataset.json, with absolute paths."""

    index: int
    name: str
    image: Path
    label: Path


# --------------------------------------------------------------------------------- the mapping
def read_mapping_header(
    path: str | os.PathLike[str], keys: tuple[str, ...], ontology: Ontology, hint: str = ""
) -> tuple[dict, str, str]:
    """A mapping file's JSON object with its modality and region resolved against the ontology.

    ``keys`` are the keys the file may hold; ``modality``, ``region`` and the first key after them
    (what it maps: ``labels`` or ``segments``) are required. Shared by the label-value mappings
    here and the DICOM reference mappings, so both refuse a bad file with the same words.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mapping file '{path}' does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"mapping file '{path}' is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise DatasetError(f"mapping file '{path}' must hold a JSON object")
    unknown = set(document) - set(keys)
    if unknown:
        raise DatasetError(
            f"mapping file '{path}': unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(keys)}"
        )
    for key in keys[:3]:
        if key not in document:
            raise DatasetError(f"mapping file '{path}' needs '{key}'{hint}")
    try:
        modality = ontology.modality_key(str(document["modality"]))
        region = ontology.region_key(str(document["region"]), modality)
    except UnknownPromptError as error:
        raise DatasetError(f"mapping file '{path}': {error}") from None
    return document, modality, region


def load_mapping(path: str | os.PathLike[str], ontology: Ontology | None = None) -> LabelMapping:
    """Read and validate a mapping file; raises :class:`DatasetError` naming the file and the fault."""
    ontology = ontology or load_ontology()
    path = Path(path)
    document, modality, region = read_mapping_header(
        path, ("modality", "region", "labels", "ignore", "unannotated", "channel", "description"), ontology)
    labels = document["labels"]
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"mapping file '{path}': 'labels' must be a non-empty object")
    structures: dict[str, set[int]] = {}
    for key, value in labels.items():
        if _is_label_value(key):
            names = value if isinstance(value, list) else [value]
            for name in names:
                structure = _structure(name, modality, region, ontology, path)
                structures.setdefault(structure, set()).add(_label_value(key, path))
        else:
            structure = _structure(key, modality, region, ontology, path)
            values = value if isinstance(value, list) else [value]
            structures.setdefault(structure, set()).update(_label_value(v, path) for v in values)
    ignore = tuple(_label_value(v, path) for v in document.get("ignore", []))
    unannotated = _unannotated(document.get("unannotated", {}), set(ignore), ontology, path)
    channel = document.get("channel")
    if channel is not None and (not isinstance(channel, int) or channel < 0):
        raise DatasetError(f"mapping file '{path}': 'channel' must be a non-negative integer, not {channel!r}")
    return LabelMapping(
        modality=modality,
        region=region,
        structures={k: tuple(sorted(v)) for k, v in structures.items()},
        ignore=ignore,
        channel=channel,
        source=str(path),
        unannotated=unannotated,
    )


def _unannotated(document: object, ignore: set[int], ontology: Ontology, path: Path) -> dict[str, tuple[int, ...]]:
    """The mapping's ``unannotated`` object: ontology keys of any context, each naming ignored values."""
    if not isinstance(document, dict):
        raise DatasetError(f"mapping file '{path}': 'unannotated' must be an object of structure -> label values")
    names: dict[str, tuple[int, ...]] = {}
    for name, value in document.items():
        try:
            key = ontology.structure_key(str(name))
        except UnknownPromptError as error:
            raise DatasetError(f"mapping file '{path}': unannotated: {error}") from None
        values = tuple(_label_value(v, path) for v in (value if isinstance(value, list) else [value]))
        stray = sorted(set(values) - ignore)
        if stray:
            raise DatasetError(f"mapping file '{path}': unannotated '{name}' names value(s) {stray} that are not "
                               "under 'ignore'; an annotated value is named by 'labels' alone")
        names[key] = values
    return names


def _is_label_value(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def _label_value(value: object, path: Path) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise DatasetError(f"mapping file '{path}': {value!r} is not an integer label value") from None
    if number <= 0:
        raise DatasetError(f"mapping file '{path}': label value {number} cannot name a structure (0 is background)")
    return number


def _structure(name: object, modality: str, region: str, ontology: Ontology, path: Path) -> str:
    try:
        key = ontology.structure_key(str(name))
    except UnknownPromptError as error:
        raise DatasetError(f"mapping file '{path}': {error}") from None
    valid = ontology.structures_of(modality, region)
    if key not in valid:
        raise DatasetError(
            f"mapping file '{path}': '{name}' is not a structure of {modality} {region}; "
            f"choose one of: {', '.join(valid)}"
        )
    return key


# ------------------------------------------------------------------------------ dataset.json
def read_dataset_json(folder: str | os.PathLike[str]) -> list[DecathlonEntry]:
    """The training pairs of a Decathlon folder; every named file must exist.

    All missing files are reported at once (up to ten), so a half-copied dataset is fixed in one go.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder '{folder}' does not exist")
    manifest = folder / "dataset.json"
    if not manifest.is_file():
        raise DatasetError(f"'{folder}' has no dataset.json; is it a Medical Segmentation Decathlon folder?")
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"'{manifest}' is not valid JSON: {error}") from None
    training = document.get("training") if isinstance(document, dict) else None
    if not isinstance(training, list) or not training:
        raise DatasetError(f"'{manifest}' lists no 'training' cases")
    entries: list[DecathlonEntry] = []
    missing: list[str] = []
    for index, item in enumerate(training):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DatasetError(f"'{manifest}': training[{index}] needs 'image' and 'label'")
        image, label = folder / item["image"], folder / item["label"]
        missing += [str(p.relative_to(folder)) for p in (image, label) if not p.is_file()]
        entries.append(DecathlonEntry(index, _case_name(image), image, label))
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DatasetError(
            f"'{manifest}' names {len(missing)} file(s) that do not exist: {', '.join(missing[:10])}{more}"
        )
    return entries


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ------------------------------------------------------------------------------- training hooks
def decathlon_case_specs(dataset: DatasetSpec, index: int) -> list[CaseSpec]:
    """Recipes for every case of a Decathlon dataset (called by ``training.data.case_specs``).

    ``CaseSpec.path`` is the dataset folder, ``mapping`` the mapping file, and ``seed`` the case's
    position in dataset.json's ``training`` list: a worker process rereads the small manifest
    rather than receiving paths the manifest could contradict. The mapping and the manifest are
    validated here, in the main process, before any worker starts.
    """
    if not dataset.path or not dataset.mapping:
        raise DatasetError("a decathlon dataset needs 'path' and 'mapping'")
    mapping = load_mapping(dataset.mapping)
    entries = read_dataset_json(dataset.path)
    return [
        CaseSpec(
            name=f"d{index}-{entry.name}",
            dataset=index,
            kind="decathlon",
            modality=mapping.modality,
            region=mapping.region,
            seed=entry.index,
            path=str(Path(dataset.path).resolve()),
            mapping=str(Path(dataset.mapping).resolve()),
        )
        for entry in entries
    ]


def load_decathlon_case(spec: CaseSpec) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    """The image and the masks of the structures it annotates, for one :class:`CaseSpec`."""
    mapping = load_mapping(spec.mapping)  # type: ignore[arg-type]
    entries = read_dataset_json(spec.path)  # type: ignore[arg-type]
    if not 0 <= spec.seed < len(entries):
        raise DatasetError(f"'{spec.path}/dataset.json' has no training case {spec.seed}")
    return load_entry(entries[spec.seed], mapping)


def iter_decathlon_cases(
    folder: str | os.PathLike[str], mapping_path: str | os.PathLike[str]
) -> Iterator[tuple[DecathlonEntry, LabelMapping, VolumeImage, dict[str, np.ndarray]]]:
    """Every case of a folder, one at a time (evaluation holds one volume in memory, not all)."""
    mapping = load_mapping(mapping_path)
    for entry in read_dataset_json(folder):
        image, masks = load_entry(entry, mapping)
        yield entry, mapping, image, masks


def load_entry(entry: DecathlonEntry, mapping: LabelMapping) -> tuple[VolumeImage, dict[str, np.ndarray]]:
    """Read one pair, check it against the mapping, and turn its label values into masks."""
    image = _read_volume(entry.image, mapping.channel, "image")
    label_image = _read_volume(entry.label, None, "label")
    if not image.same_geometry(label_image):
        raise DatasetError(
            f"'{entry.image.name}' and '{entry.label.name}' have different geometry "
            f"(image {'x'.join(map(str, image.shape_ijk))} at {_mm(image.spacing)} mm, origin {_mm(image.origin)}; "
            f"label {'x'.join(map(str, label_image.shape_ijk))} at {_mm(label_image.spacing)} mm, "
            f"origin {_mm(label_image.origin)}); a label must lie on its image's voxels"
        )
    labels = label_image.array
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise DatasetError(f"label '{entry.label}' holds non-integer values; a label map holds integers")
        labels = labels.astype(np.int64)
    present = {int(v) for v in np.unique(labels)}
    unmapped = sorted(present - mapping.known_values)
    if unmapped:
        raise DatasetError(
            f"label '{entry.label}' holds value(s) {', '.join(map(str, unmapped))} that the mapping "
            f"'{mapping.source}' does not name; map them to structures or list them under \"ignore\""
        )
    return image, mapping.masks(labels)


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _read_volume(path: Path, channel: int | None, role: str) -> VolumeImage:
    """A 3D volume from a file; a 4D or vector image needs ``channel`` (only images may have one)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise DatasetError(f"cannot read {role} '{path}': {message}") from None
    channels = 1
    if image.GetDimension() == 4:
        channels = image.GetSize()[3]
    elif image.GetNumberOfComponentsPerPixel() > 1:
        channels = image.GetNumberOfComponentsPerPixel()
    if channels > 1 or image.GetDimension() == 4:
        if channel is None and channels > 1:
            raise DatasetError(
                f"{role} '{path}' has {channels} channels (a multi-sequence image); "
                + ("set \"channel\" in the mapping file to the one to use" if role == "image"
                   else "a label map must have one")
            )
        chosen = channel or 0
        if chosen >= channels:
            raise DatasetError(f"{role} '{path}' has {channels} channel(s); channel {chosen} does not exist")
        if image.GetDimension() == 4:
            image = image[:, :, :, chosen]
        else:
            image = sitk.VectorIndexSelectionCast(image, chosen)
    if image.GetDimension() != 3:
        raise DatasetError(f"{role} '{path}' has {image.GetDimension()} dimensions; a 3D volume is needed")
    return VolumeImage(
        array=sitk.GetArrayFromImage(image),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.array(image.GetDirection()).reshape(3, 3),
    )


# ------------------------------------------------------------------------------------- writing
def write_decathlon_dataset(
    folder: str | os.PathLike[str],
    cases: list[tuple[str, VolumeImage, np.ndarray]],
    mapping: dict,
) -> Path:
    """Write ``(name, image, label map)`` triples as a Decathlon folder with ``mapping.json``.

    How phantoms become a dataset a user can inspect, and how tests build one; the folder reads
    back through the same path as any downloaded Decathlon task.
    """
    from ..imageio import write_image

    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for name, image, labels in cases:
        write_image(image, folder / "imagesTr" / f"{name}.nii.gz")
        write_image(image.with_array(labels.astype(np.uint8)), folder / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    manifest = {"name": folder.name, "tensorImageSize": "3D", "numTraining": len(training), "training": training}
    (folder / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (folder / "mapping.json").write_text(json.dumps(mapping, indent=2) + "\n", encoding="utf-8")
    return folder


TOY_MAPPING = {"modality": "CT", "region": "abdomen", "labels": {"liver": [1, 2], "2": "liver_tumour"}}


def toy_case(seed: int, shape: tuple[int, int, int] = (24, 24, 24),
             spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> tuple[VolumeImage, np.ndarray]:
    """A tiny CT-like volume: a body, a bright 'liver' ellipsoid with a brighter 'tumour' inside.

    Labels: 1 liver, 2 tumour (which :data:`TOY_MAPPING` also counts as liver). Seconds to learn,
    so a training pipeline can be checked end to end without any real data.
    """
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    size = np.array(shape, dtype=np.float32)

    def ellipsoid(centre, radii):
        return sum(((axis - c) / r) ** 2 for axis, c, r in zip((k, j, i), centre, radii)) <= 1.0

    body = ellipsoid(size / 2, size * 0.45)
    centre = size / 2 + rng.uniform(-0.12, 0.12, 3) * size
    radii = size * rng.uniform(0.18, 0.26, 3)
    liver = ellipsoid(centre, radii) & body
    tumour = ellipsoid(centre + rng.uniform(-0.3, 0.3, 3) * radii, radii * rng.uniform(0.3, 0.45)) & liver
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = 0.0
    image[liver] = 250.0
    image[tumour] = 600.0
    image += rng.normal(0.0, 30.0, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[liver] = 1
    labels[tumour] = 2
    origin = tuple(float(v) for v in rng.uniform(-50, 50, 3))
    return VolumeImage(image.astype(np.int16), spacing, origin), labels


def write_toy_dataset(folder: str | os.PathLike[str], cases: int = 4, seed: int = 0,
                      shape: tuple[int, int, int] = (24, 24, 24),
                      spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> Path:
    """A Decathlon folder of :func:`toy_case` volumes with its ``mapping.json``."""
    triples = [(f"toy_{seed + n:03d}", *toy_case(seed + n, shape, spacing)) for n in range(cases)]
    return write_decathlon_dataset(folder, triples, TOY_MAPPING)
