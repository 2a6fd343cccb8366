"""Tissue appearance per modality: one table, so every region images the same tissue the same way.

Columns: CT HU without and with intravenous contrast (portal-venous phase); MRI T1-weighted,
T2-weighted and balanced-SSFP (cine) signal on a 0-1000 scale; FDG-PET SUV; ultrasound echogenicity
(mean backscatter, 0-1), attenuation (dB/cm at ~3.5 MHz) and interface reflectivity (0-1: how much
of the beam a surface sends back; gas and bone reflect nearly all of it, hence the shadows). Values
are typical textbook figures; per case each is jittered a little (:mod:`.intensity`).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TissueProperties", "TISSUES"]


class TissueProperties(NamedTuple):
    ct_plain: float
    ct_contrast: float
    t1: float
    t2: float
    bssfp: float
    suv: float
    echo: float
    attenuation: float
    reflectivity: float
    texture: float  # relative heterogeneity of the tissue (0: uniform), scaled per modality


def _t(*values: float) -> TissueProperties:
    return TissueProperties(*values)


# fmt: off
#                      CT plain  CT c+    T1    T2  bSSFP   SUV   echo  atten refl  texture
TISSUES: dict[str, TissueProperties] = {
    "air":            _t(-1000, -1000,     0,    0,    0,  0.0,  0.00,  0.0, 0.99, 0.0),
    "gas":            _t(-990,  -990,      0,    0,    0,  0.0,  0.00,  0.0, 0.99, 0.0),
    "lung":           _t(-850,  -840,     20,   30,   40,  0.4,  0.30, 20.0, 0.95, 0.6),
    "fat":            _t(-100,  -95,     900,  650,  800,  0.35, 0.35,  2.0, 0.0,  0.2),
    "skin":           _t(40,    50,      500,  400,  400,  0.6,  0.75,  3.0, 0.05, 0.2),
    "muscle":         _t(50,    60,      350,  200,  250,  0.8,  0.30,  3.5, 0.0,  0.2),
    "bone":           _t(900,   900,      50,   40,   40,  0.5,  0.95, 70.0, 0.90, 0.4),
    "marrow":         _t(250,   260,     700,  500,  600,  1.6,  0.80, 30.0, 0.60, 0.6),
    "disc":           _t(90,    100,     300,  600,  400,  0.6,  0.40,  4.0, 0.0,  0.2),
    "csf":            _t(5,     5,       120, 1000,  900,  0.3,  0.02,  0.2, 0.0,  0.0),
    "blood":          _t(40,    180,     100,   60,  900,  1.8,  0.03,  0.6, 0.0,  0.05),
    "liver":          _t(58,    110,     550,  250,  350,  2.3,  0.45,  1.7, 0.0,  0.25),
    "spleen":         _t(50,    120,     420,  500,  450,  2.0,  0.42,  1.7, 0.0,  0.2),
    "kidney_cortex":  _t(35,    180,     450,  550,  500,  3.5,  0.32,  3.0, 0.0,  0.2),
    "kidney_medulla": _t(32,    110,     350,  650,  500,  5.0,  0.15,  3.0, 0.0,  0.2),
    "urine":          _t(8,     10,      100, 1000,  900, 15.0,  0.02,  0.2, 0.0,  0.0),
    "pancreas":       _t(45,    100,     600,  350,  400,  1.5,  0.55,  2.0, 0.0,  0.45),
    "stomach_wall":   _t(45,    95,      400,  300,  300,  1.8,  0.45,  3.0, 0.0,  0.2),
    "gastric_fluid":  _t(15,    15,      150,  900,  800,  0.6,  0.08,  0.5, 0.0,  0.3),
    "bowel":          _t(30,    60,      350,  450,  400,  1.6,  0.45,  2.5, 0.2,  0.8),
    "bile":           _t(5,     5,       150,  950,  900,  1.0,  0.02,  0.2, 0.0,  0.0),
    "bladder_wall":   _t(40,    70,      350,  200,  250,  3.0,  0.60,  3.0, 0.0,  0.1),
    "prostate":       _t(40,    75,      400,  550,  400,  1.8,  0.35,  3.0, 0.0,  0.35),
    "rectum_wall":    _t(40,    75,      380,  250,  300,  1.8,  0.50,  3.0, 0.0,  0.2),
    "adrenal":        _t(30,    60,      400,  350,  350,  1.5,  0.40,  2.0, 0.0,  0.1),
    "thyroid":        _t(100,   140,     450,  450,  450,  1.5,  0.65,  2.5, 0.0,  0.15),
    "gland":          _t(15,    50,      550,  500,  500,  1.8,  0.55,  2.5, 0.0,  0.3),
    "lymph_node":     _t(35,    70,      400,  600,  450,  1.2,  0.20,  2.0, 0.0,  0.1),
    "tumour":         _t(42,    80,      380,  700,  500,  9.0,  0.25,  2.0, 0.0,  0.4),
    "liver_tumour":   _t(40,    60,      300,  700,  500,  7.0,  0.70,  2.0, 0.0,  0.4),
    "kidney_tumour":  _t(35,    120,     380,  650,  500,  5.0,  0.50,  2.0, 0.0,  0.4),
    "necrosis":       _t(20,    22,      150,  900,  700,  1.0,  0.10,  1.0, 0.0,  0.3),
    "edema":          _t(22,    24,      350,  850,  600,  1.5,  0.30,  1.5, 0.0,  0.2),
    "grey_matter":    _t(38,    42,      450,  600,  500,  9.0,  0.25,  1.0, 0.0,  0.05),
    "white_matter":   _t(28,    30,      650,  420,  450,  3.5,  0.35,  1.0, 0.0,  0.05),
    "brain_tumour":   _t(35,    60,      350,  750,  550, 12.0,  0.60,  1.5, 0.0,  0.4),
    "choroid_plexus": _t(40,    60,      400,  500,  500,  1.0,  0.90,  2.0, 0.0,  0.1),
    "nerve":          _t(30,    32,      600,  420,  450,  3.0,  0.40,  2.0, 0.0,  0.05),
    "eye":            _t(10,    10,      120,  950,  900,  0.8,  0.02,  0.2, 0.0,  0.0),
    "lens":           _t(90,    90,      500,  200,  300,  0.5,  0.50,  2.0, 0.0,  0.0),
    "myocardium":     _t(45,    120,     380,  250,  300,  6.0,  0.40,  3.5, 0.0,  0.1),
    "cartilage":      _t(120,   130,     300,  350,  300,  0.8,  0.30,  5.0, 0.0,  0.2),
    "table":          _t(150,   150,       0,    0,    0,  0.0,  0.00,  0.0, 0.0,  0.0),
    "table_foam":     _t(-900,  -900,      0,    0,    0,  0.0,  0.00,  0.0, 0.0,  0.0),
}
# fmt: on
