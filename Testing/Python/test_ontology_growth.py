"""Ontology 1.1 covers what real CT labels annotate, keeps every prompt of 1.0 working, and gives each
new structure the SNOMED-CT terminology Slicer's TotalSegmentator integration uses."""

from __future__ import annotations

import json

import pytest

from DuPLUSLib.ontology import load_ontology

ONTOLOGY = load_ontology()

# The hierarchy of ontology 1.0 (DuPLUS for 3D Slicer up to preview 3), every prompt of which must still parse.
HIERARCHY_1_0 = json.loads("""{"CT": {"brain": ["brain", "ventricles", "brain_tumour"], "head_neck": ["brainstem", "spinal_cord", "parotid_left", "parotid_right", "submandibular_left", "submandibular_right", "mandible", "eye_left", "eye_right", "optic_nerve_left", "optic_nerve_right", "optic_chiasm", "thyroid", "gtvp", "gtvn"], "thorax": ["lung_left", "lung_right", "heart", "trachea", "oesophagus", "aorta", "spinal_cord", "vertebrae"], "abdomen": ["liver", "liver_tumour", "spleen", "pancreas", "stomach", "gallbladder", "kidney_left", "kidney_right", "kidney_tumour", "adrenal_left", "adrenal_right", "aorta", "inferior_vena_cava", "oesophagus", "vertebrae"], "pelvis": ["bladder", "prostate", "rectum", "femoral_head_left", "femoral_head_right"]}, "MRI": {"brain": ["brain", "grey_matter", "white_matter", "ventricles", "brain_tumour"], "head_neck": ["parotid_left", "parotid_right", "brainstem", "spinal_cord", "gtvp", "gtvn"], "thorax": ["left_ventricle", "right_ventricle", "myocardium"], "abdomen": ["liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach", "gallbladder", "aorta"], "pelvis": ["prostate", "bladder", "rectum"]}, "PET": {"brain": ["brain", "lesion"], "head_neck": ["gtvp", "gtvn", "lesion"], "thorax": ["heart", "lesion"], "abdomen": ["liver", "kidney_left", "kidney_right", "lesion"], "pelvis": ["bladder", "lesion"]}, "US": {"brain": ["ventricles", "brain"], "head_neck": ["thyroid", "lesion"], "thorax": ["heart", "lesion"], "abdomen": ["liver", "gallbladder", "kidney_left", "kidney_right", "lesion"], "pelvis": ["bladder", "prostate", "lesion"]}}""")

NEW_CT_STRUCTURES = ["colon", "small_bowel", "duodenum", "portal_splenic_vein", "iliac_artery_left", "iliac_vein_right",
                     "hip_left", "sacrum", "femur_right", "ribs", "iliopsoas_left", "gluteus_maximus_right",
                     "gluteus_minimus_left", "autochthon_right", "costal_cartilages", "lung_tumour"]


def test_every_prompt_of_ontology_1_0_still_names_the_same_structure():
    for modality, regions in HIERARCHY_1_0.items():
        for region, keys in regions.items():
            for key in keys:
                (prompt,) = ONTOLOGY.parse(f"{modality}/{region}/{key}")
                assert prompt.structure == key


@pytest.mark.parametrize("key", NEW_CT_STRUCTURES)
def test_new_structures_are_prompts_of_ct_with_snomed_terminology(key):
    assert any(key in ONTOLOGY.structures_of("CT", region) for region in ONTOLOGY.regions_of("CT"))
    terminology = ONTOLOGY.structures[key].terminology
    assert terminology.category.scheme == "SCT" and terminology.type.scheme == "SCT"
    assert terminology.type.value.isdigit()


def test_totalsegmentator_names_and_common_words_reach_the_new_structures():
    assert ONTOLOGY.parse("CT/pelvis/left femur")[0].structure == "femur_left"
    assert ONTOLOGY.parse("CT/pelvis/left hip")[0].structure == "hip_left"
    assert ONTOLOGY.parse("CT/pelvis/urinary_bladder")[0].structure == "bladder"
    assert ONTOLOGY.parse("CT/thorax/lung tumor")[0].structure == "lung_tumour"
    assert ONTOLOGY.parse("CT/abdomen/portal vein")[0].structure == "portal_splenic_vein"
    assert ONTOLOGY.parse("CT/pelvis/left femoral head")[0].structure == "femoral_head_left"


def test_sided_structures_carry_their_side_as_a_modifier():
    assert ONTOLOGY.structures["gluteus_medius_left"].terminology.modifier.value == "7771000"
    assert ONTOLOGY.structures["iliac_artery_right"].terminology.modifier.value == "24028007"
