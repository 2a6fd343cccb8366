"""The Segment module's dropdown cascade and suggestions, as plain Python."""

from __future__ import annotations

import numpy as np
import pytest

from DuPLUSLib import cascade
from DuPLUSLib.errors import UnknownPromptError
from DuPLUSLib.ontology import load_ontology


def keys(choices):
    return [choice.key for choice in choices]


def prompt_keys(*args, **kwargs) -> list[str]:
    return [prompt.key for prompt in cascade.compose(*args, **kwargs)]


def test_every_modality_is_offered_in_ontology_order():
    assert keys(cascade.modality_choices()) == ["CT", "MRI", "PET", "US"]


def test_regions_follow_the_chosen_modality():
    ontology = load_ontology()
    for modality in ontology.hierarchy:
        assert keys(cascade.region_choices(modality)) == ontology.regions_of(modality)


def test_structures_follow_modality_and_region_with_colours():
    choices = cascade.structure_choices("CT", "abdomen")
    assert "liver" in keys(choices) and "brainstem" not in keys(choices)
    liver = next(c for c in choices if c.key == "liver")
    assert liver.label == "liver" and liver.color == load_ontology().structures["liver"].color
    assert "CT/abdomen/liver" in liver.tooltip


def test_dropdowns_accept_synonyms_of_modality_and_region():
    assert keys(cascade.region_choices("mr")) == keys(cascade.region_choices("MRI"))
    assert keys(cascade.structure_choices("ct", "belly")) == keys(cascade.structure_choices("CT", "abdomen"))


def test_unknown_modality_lists_the_choices():
    with pytest.raises(UnknownPromptError, match="CT, MRI, PET, US"):
        cascade.region_choices("xray")


def test_ticked_structures_become_prompt_keys_in_order():
    prompts = prompt_keys("CT", "abdomen", ["spleen", "liver"])
    assert prompts == ["CT/abdomen/spleen", "CT/abdomen/liver"]


def test_all_of_region_gives_every_structure_of_the_region():
    prompts = prompt_keys("MRI", "brain", ["brain"], all_of_region=True)
    assert prompts == [f"MRI/brain/{k}" for k in load_ontology().structures_of("MRI", "brain")]


def test_free_text_takes_full_prompts_and_bare_names_in_the_chosen_context():
    prompts = prompt_keys("CT", "abdomen", ["liver"], free_text="spleen, Liver; MRI/brain/brain")
    assert prompts == ["CT/abdomen/liver", "CT/abdomen/spleen", "MRI/brain/brain"]


def test_free_text_bare_name_found_in_several_regions_uses_the_chosen_region():
    ontology = load_ontology()
    shared = [
        key
        for key in ontology.structures
        if sum(key in ontology.hierarchy["CT"][r] for r in ontology.regions_of("CT")) > 1
    ]
    if not shared:
        pytest.skip("no CT structure lies in two regions in this ontology")
    region = next(r for r in ontology.regions_of("CT") if shared[0] in ontology.hierarchy["CT"][r])
    assert prompt_keys("CT", region, [], free_text=shared[0]) == [f"CT/{region}/{shared[0]}"]


def test_free_text_typo_is_refused_with_choices():
    with pytest.raises(UnknownPromptError, match="choose one of"):
        prompt_keys("CT", "abdomen", [], free_text="unicorn")


def test_free_text_split_ignores_empty_parts():
    assert cascade.split_free_text(" liver ,, spleen;\n\n kidney ") == ["liver", "spleen", "kidney"]


def test_all_of_region_without_a_region_is_refused():
    with pytest.raises(UnknownPromptError, match="needs a modality and a region"):
        prompt_keys("CT", None, [], all_of_region=True)


@pytest.mark.parametrize("code, modality", [("CT", "CT"), ("MR", "MRI"), ("PT", "PET"), ("us", "US")])
def test_dicom_modality_tag_decides_the_guess(code, modality):
    guess = cascade.guess_modality(code, np.zeros((2, 2, 2)))
    assert guess.modality == modality and "DICOM" in guess.reason


def test_unsupported_dicom_modality_gives_no_guess():
    assert cascade.guess_modality("NM").modality is None


def test_intensity_ranges_suggest_a_modality():
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 1500, (8, 8, 8)).astype(np.int16)
    us = rng.integers(0, 256, (8, 8, 8)).astype(np.uint8)
    pet = rng.gamma(1.0, 2.0, (8, 8, 8)).astype(np.float32)
    mri = rng.integers(0, 3000, (8, 8, 8)).astype(np.int16)
    assert cascade.guess_modality(array=ct).modality == "CT"
    assert cascade.guess_modality(array=us).modality == "US"
    assert cascade.guess_modality(array=pet).modality == "PET"
    assert cascade.guess_modality(array=mri).modality == "MRI"


def test_body_part_examined_suggests_a_region_the_modality_has():
    assert cascade.guess_region("ABDOMEN", "CT") == "abdomen"
    assert cascade.guess_region("Head Neck", "PET") == "head_neck"
    assert cascade.guess_region("FOOT", "CT") is None
    assert cascade.guess_region(None) is None


def test_segment_button_tooltip_names_what_is_missing():
    assert cascade.missing_for_segment(None, ["CT/abdomen/liver"], None) == []
    missing = cascade.missing_for_segment("no input volume selected", [], None)
    assert missing == ["no input volume selected", "no structure chosen: tick at least one structure or type a prompt"]
    assert "running" in cascade.missing_for_segment(None, ["x"], None, busy=True)[0]
    assert cascade.missing_for_segment(None, [], "'unicorn' is not a known structure") == [
        "'unicorn' is not a known structure"
    ]
