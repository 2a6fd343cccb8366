"""A synthetic head-and-neck cohort: phantom CTs with tumours, EHR, and survival that depends on both.

Why: no image + EHR + survival cohort ships in any wheel, and the image path has to be shown to add
information before anyone trusts it. Here the truth is known:

* each patient is a head-and-neck CT phantom (``generate_phantom("CT", "head_neck", seed)``) with its
  GTVp and GTVn masks; patients whose phantom has no tumour are skipped;
* the EHR follows the literature's associations: HPV-positive disease mostly oropharyngeal, in
  younger never-smokers; T stage a *noisy, coarse* reading of the primary's volume, N stage of the
  nodes', so stage carries part of the image's information but not all of it;
* the true log-hazard adds HPV-negative (+0.9), overall stage, age, current smoking and ECOG to the
  continuous (log) tumour volumes and the primary's mean density (hypodense, necrotic tumours do
  worse), so only a model that sees the image recovers all of it;
* times are Weibull (shape 1.3, median about 4 years at average risk), censored by administrative
  follow-up of 2-8 years.

The case factory is injectable so tests can use a tiny in-memory volume instead of the phantom.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..imageio import VolumeImage

__all__ = ["SyntheticPatient", "phantom_case", "synthetic_patients", "write_synthetic_cohort", "TRUE_EFFECTS"]

CaseFactory = Callable[[int], "tuple[VolumeImage, dict[str, np.ndarray]] | None"]

TRUE_EFFECTS = {
    "hpv_negative": 0.9, "stage_per_level": 0.3, "age_per_decade": 0.25, "current_smoker": 0.3,
    "ecog_per_point": 0.3, "log_gtvp_volume_sd": 0.6, "log_gtvn_volume_sd": 0.3, "gtvp_density_sd": -0.5,
}


@dataclass
class SyntheticPatient:
    seed: int
    ehr: dict
    image: VolumeImage
    masks: dict[str, np.ndarray]
    time_years: float
    death: int
    true_log_hazard: float


def phantom_case(seed: int, spacing_mm: float = 3.0) -> tuple[VolumeImage, dict[str, np.ndarray]] | None:
    """The head-and-neck CT phantom of ``seed`` with its tumour masks, or None if it has no tumour."""
    from ..phantoms import generate_phantom

    phantom = generate_phantom("CT", "head_neck", seed, spacing=spacing_mm)
    masks = {k: phantom.labels[k] for k in ("gtvp", "gtvn") if k in phantom.labels}
    if not any(m.any() for m in masks.values()):
        return None
    return phantom.image, masks


def synthetic_patients(patients: int, seed: int = 0, case_factory: CaseFactory | None = None,
                       progress: Callable[[str], None] | None = None) -> list[SyntheticPatient]:
    """``patients`` synthetic patients with tumours (phantom seeds from ``seed * 100000`` upwards)."""
    factory = case_factory or phantom_case
    rng = np.random.default_rng(seed)
    cases = []
    case_seed = seed * 100_000
    while len(cases) < patients:
        case = factory(case_seed)
        if case is not None:
            cases.append((case_seed, *case))
            if progress:
                progress(f"phantom {len(cases)}/{patients}")
        case_seed += 1
        if case_seed - seed * 100_000 > 4 * patients + 20:
            raise RuntimeError("the phantom generator gives too few cases with a tumour")
    voxel_ml = [float(np.prod(image.spacing)) / 1000.0 for _, image, _ in cases]
    gtvp_ml = np.array([m.get("gtvp", np.zeros(1, bool)).sum() * v for (_, _, m), v in zip(cases, voxel_ml)])
    gtvn_ml = np.array([m.get("gtvn", np.zeros(1, bool)).sum() * v for (_, _, m), v in zip(cases, voxel_ml)])
    density = np.array([float(image.array[m["gtvp"]].mean()) if "gtvp" in m and m["gtvp"].any() else np.nan
                        for _, image, m in cases])
    log_p, log_n = np.log1p(gtvp_ml), np.log1p(gtvn_ml)
    density_z = _z(np.where(np.isnan(density), np.nanmean(density) if np.isfinite(density).any() else 0.0, density))
    ehrs, hazards = [], []
    t_cuts = np.quantile(log_p + rng.normal(0, 0.35 * (log_p.std() + 1e-6), len(log_p)), [0.25, 0.5, 0.8])
    n_cuts = np.quantile(log_n[log_n > 0], [0.4, 0.85]) if (log_n > 0).sum() > 3 else np.array([1.0, 2.0])
    for i in range(len(cases)):
        ehr = _ehr(rng, log_p[i], log_n[i], t_cuts, n_cuts)
        ehrs.append(ehr)
        hazards.append(_true_log_hazard(ehr, _z(log_p)[i], _z(log_n)[i], density_z[i]))
    hazards = np.array(hazards) - np.mean(hazards)
    shape, median_years = 1.3, 4.0
    scale = median_years / np.log(2) ** (1 / shape)
    event_time = scale * (-np.log(rng.uniform(size=len(cases))) / np.exp(hazards)) ** (1 / shape)
    follow_up = rng.uniform(2.0, 8.0, len(cases))
    time = np.round(np.minimum(event_time, follow_up), 2).clip(0.05)
    death = (event_time <= follow_up).astype(int)
    return [SyntheticPatient(s, e, image, masks, float(t), int(d), float(h))
            for (s, image, masks), e, t, d, h in zip(cases, ehrs, time, death, hazards)]


def _z(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + 1e-9)


def _ehr(rng: np.random.Generator, log_p: float, log_n: float, t_cuts: np.ndarray, n_cuts: np.ndarray) -> dict:
    site = rng.choice(["oropharynx", "larynx", "oral_cavity", "hypopharynx", "nasopharynx"], p=[0.5, 0.2, 0.15, 0.1, 0.05])
    hpv = "positive" if rng.random() < (0.65 if site == "oropharynx" else 0.1) else "negative"
    age = float(np.clip(np.round(rng.normal(58 if hpv == "positive" else 64, 9)), 35, 88))
    smoking_p = [0.5, 0.3, 0.2] if hpv == "positive" else [0.15, 0.35, 0.5]
    smoking = str(rng.choice(["never", "former", "current"], p=smoking_p))
    t = 1 + int(np.searchsorted(t_cuts, log_p + rng.normal(0, 0.3)))
    n = 0 if log_n == 0 else 1 + int(np.searchsorted(n_cuts, log_n))
    m = int(rng.random() < 0.05)
    stage = "IVC" if m else "IVB" if n == 3 else "IVA" if (t == 4 or n == 2) else "III" if (t == 3 or n == 1) else ("II" if t == 2 else "I")
    ecog = int(rng.choice([0, 1, 2], p=[0.55, 0.35, 0.10]))
    treatment = "radiotherapy" if stage in ("I", "II") and rng.random() < 0.7 else \
        ("surgery_radiotherapy" if rng.random() < 0.2 else "chemoradiotherapy")
    return {"age": age, "sex": "male" if rng.random() < 0.78 else "female", "site": str(site), "hpv": hpv,
            "t_stage": f"T{t}", "n_stage": f"N{n}", "m_stage": f"M{m}", "stage": stage, "smoking": smoking,
            "pack_years": 0.0 if smoking == "never" else float(np.round(rng.gamma(4, 8))), "ecog": ecog,
            "treatment": treatment}


def _true_log_hazard(ehr: dict, log_p_z: float, log_n_z: float, density_z: float) -> float:
    stage_level = {"I": 1, "II": 2, "III": 3, "IVA": 4, "IVB": 4.33, "IVC": 4.67}[ehr["stage"]]
    e = TRUE_EFFECTS
    return (e["hpv_negative"] * (ehr["hpv"] == "negative") + e["stage_per_level"] * stage_level
            + e["age_per_decade"] * (ehr["age"] - 62) / 10 + e["current_smoker"] * (ehr["smoking"] == "current")
            + e["ecog_per_point"] * ehr["ecog"] + e["log_gtvp_volume_sd"] * log_p_z
            + e["log_gtvn_volume_sd"] * log_n_z + e["gtvp_density_sd"] * density_z)


def write_synthetic_cohort(path: str | os.PathLike[str], patients: int = 160, seed: int = 0, overwrite: bool = False,
                           case_factory: CaseFactory | None = None,
                           progress: Callable[[str], None] | None = None) -> Path:
    """Write ``cohort.csv`` with ``images/<id>.nrrd`` and ``images/<id>.seg.nrrd`` beside it."""
    import pandas as pd

    from ..imageio import SegmentMask, atomic_output, check_output_path, write_image, write_segmentation
    from ..ontology import load_ontology

    path = check_output_path(path, overwrite)
    cohort = synthetic_patients(patients, seed, case_factory, progress)
    ontology = load_ontology()
    folder = path.parent / "images"
    folder.mkdir(exist_ok=True)
    rows = []
    for number, patient in enumerate(cohort, start=1):
        patient_id = f"hn-{seed:02d}-{number:04d}"
        image_file, seg_file = folder / f"{patient_id}.nrrd", folder / f"{patient_id}.seg.nrrd"
        write_image(patient.image, image_file)
        segments = [SegmentMask(ontology.structures[k], m.astype(bool)) for k, m in patient.masks.items()]
        write_segmentation(segments, patient.image, seg_file)
        rows.append({"patient_id": patient_id, **patient.ehr, "time_years": patient.time_years, "death": patient.death,
                     "image": f"images/{image_file.name}", "segmentation": f"images/{seg_file.name}",
                     "true_log_hazard": round(patient.true_log_hazard, 4), "phantom_seed": patient.seed})
    with atomic_output(path, overwrite) as temporary:
        pd.DataFrame(rows).to_csv(temporary, index=False)
    return path
