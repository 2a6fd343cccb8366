"""BraTS brain tumour MRI: four co-registered sequences and a label per case folder.

    BraTS 2021:  BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz   1 NCR, 2 ED, 4 ET
    BraTS 2023:  BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz   1 NCR, 2 ED, 3 ET

Each sequence becomes a part (``t1``, ``t1ce``, ``t2``, ``flair``) with the same labels. The
ontology has one brain tumour structure, so ``brain_tumour`` is the whole tumour (every non-zero
value: necrotic core, oedema and enhancing tumour); the sub-regions have no structure of their own.
A 2021 label holding 3, or a 2023 label holding 4, is refused.
"""

from __future__ import annotations

from pathlib import Path

from .common import ConversionReport, ConvertOptions, LayoutError, PartWriter, mapping_document, natural_sorted

# release -> (separator, {part: suffix}, tumour values)
RELEASES = {
    "2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}, (1, 2, 4)),
    "2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}, (1, 2, 3)),
}
LICENCE = ("BraTS: distributed through Synapse under the challenge's data use terms (research; cite the BraTS "
           "papers); check them before sharing data or a model trained on it")


def mappings(part: str, values: tuple[int, ...]) -> dict[str, dict]:
    return {f"mapping_mri_brain_{part}.json": mapping_document(
        f"BraTS whole tumour (values {', '.join(map(str, values))}: necrotic core, oedema, enhancing tumour) "
        f"on the {part} sequence", "MRI", "brain", {"brain_tumour": list(values)}, values)}


def _release(case: Path) -> str:
    for release, (separator, suffixes, _) in RELEASES.items():
        if (case / f"{case.name}{separator}seg.nii.gz").is_file() or (case / f"{case.name}{separator}{suffixes['t1']}.nii.gz").is_file():
            return release
    raise LayoutError(f"'{case}' is not a BraTS case folder: expected {case.name}_t1.nii.gz ... _seg.nii.gz "
                      f"(2021) or {case.name}-t1n.nii.gz ... -seg.nii.gz (2023)")


def _is_case(folder: Path) -> bool:
    return any(p.name.startswith((f"{folder.name}_", f"{folder.name}-")) for p in folder.iterdir() if p.is_file())


def _case_folders(source: Path) -> list[Path]:
    """The case folders in ``source``, or in its only sub-folder (the archives wrap them in one)."""
    folders = [p for p in source.iterdir() if p.is_dir()]
    cases = natural_sorted(p for p in folders if _is_case(p))
    if cases:
        return cases
    if len(folders) == 1:
        return _case_folders(folders[0])
    raise LayoutError(f"'{source}' holds no BraTS case folder (BraTS2021_NNNNN/BraTS2021_NNNNN_t1.nii.gz ... or "
                      "BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-t1n.nii.gz ...)")


def convert(source: Path, output: Path, options: ConvertOptions) -> ConversionReport:
    if options.splits:
        raise LayoutError("the brats layout has no splits; leave out --splits")
    report = ConversionReport("brats", str(source), licence=LICENCE)
    cases = _case_folders(source)
    release = _release(cases[0])
    separator, suffixes, values = RELEASES[release]
    writers = {part: PartWriter(output, part, mappings(part, values), f"BraTS {release} {part} sequence", options)
               for part in suffixes}
    for case in cases:
        if _release(case) != release:
            raise LayoutError(f"'{case}' is named like BraTS {_release(case)}, the folders before it like {release}; "
                              "convert one release at a time")
        label = case / f"{case.name}{separator}seg.nii.gz"
        if not label.is_file():
            raise LayoutError(f"'{label}' is missing; BraTS validation and test cases have no labels to train on")
        for part, suffix in suffixes.items():
            image = case / f"{case.name}{separator}{suffix}.nii.gz"
            if not image.is_file():
                raise LayoutError(f"'{image}' is missing; each BraTS {release} case holds "
                                  f"{', '.join(suffixes.values())} and seg")
            writers[part].add(case.name, image, label)
    for writer in writers.values():
        writer.finish(report)
    report.notes.append(f"BraTS {release}: brain_tumour = whole tumour (values {values}); sub-regions not in the ontology")
    return report
