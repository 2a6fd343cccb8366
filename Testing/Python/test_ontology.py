"""The prompt ontology: what it holds, how user prompts parse, and the sentences DuPLUS is prompted with."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from DuPLUSLib.errors import UnknownPromptError
from DuPLUSLib.ontology import Prompt, load_ontology

ONTOLOGY = load_ontology()

# The structures of the DuPLUS datasets the issue names, and the ontology keys that cover each.
REQUIRED_STRUCTURES = {
    "liver": {"liver"},
    "liver tumour": {"liver_tumour"},
    "kidneys": {"kidney_left", "kidney_right"},
    "kidney tumour": {"kidney_tumour"},
    "spleen": {"spleen"},
    "pancreas": {"pancreas"},
    "stomach": {"stomach"},
    "aorta": {"aorta"},
    "gallbladder": {"gallbladder"},
    "adrenals": {"adrenal_left", "adrenal_right"},
    "oesophagus": {"oesophagus"},
    "lungs": {"lung_left", "lung_right"},
    "heart": {"heart"},
    "trachea": {"trachea"},
    "spinal cord": {"spinal_cord"},
    "brainstem": {"brainstem"},
    "parotids": {"parotid_left", "parotid_right"},
    "mandible": {"mandible"},
    "optic structures": {"optic_nerve_left", "optic_nerve_right", "optic_chiasm"},
    "brain": {"brain"},
    "grey matter": {"grey_matter"},
    "white matter": {"white_matter"},
    "brain tumour": {"brain_tumour"},
    "prostate": {"prostate"},
    "bladder": {"bladder"},
    "GTVp": {"gtvp"},
    "GTVn": {"gtvn"},
}


def valid_contexts_of(structure: str) -> list[tuple[str, str]]:
    return [(m, r) for m, r in ONTOLOGY.contexts() if structure in ONTOLOGY.structures_of(m, r)]


# ---------------------------------------------------------------------------------- contents
def test_ontology_holds_at_least_thirty_structures():
    assert len(ONTOLOGY.structures) >= 30


@pytest.mark.parametrize("required", sorted(REQUIRED_STRUCTURES))
def test_every_duplus_dataset_structure_is_present_and_usable(required):
    keys = REQUIRED_STRUCTURES[required]
    assert keys <= set(ONTOLOGY.structures)
    for key in keys:
        assert valid_contexts_of(key), f"{key} is valid in no modality/region"


@pytest.mark.parametrize("modality", ["PET", "US"])
def test_lesion_is_a_tumour_prompt_of_pet_and_ultrasound(modality):
    assert ONTOLOGY.structures["lesion"].kind == "tumour"
    assert any(m == modality for m, _ in valid_contexts_of("lesion"))


def test_there_are_exactly_the_four_modalities():
    assert set(ONTOLOGY.modalities) == {"CT", "MRI", "PET", "US"}
    assert set(ONTOLOGY.hierarchy) == {"CT", "MRI", "PET", "US"}


@pytest.mark.parametrize("modality", ["CT", "MRI", "PET", "US"])
def test_every_modality_offers_the_five_regions_each_with_structures(modality):
    assert set(ONTOLOGY.regions_of(modality)) >= {"brain", "head_neck", "thorax", "abdomen", "pelvis"}
    for region in ONTOLOGY.regions_of(modality):
        assert ONTOLOGY.structures_of(modality, region), f"{modality}/{region} is empty"


@pytest.mark.parametrize("key", sorted(ONTOLOGY.structures))
def test_every_structure_has_terminology_colour_kind_and_a_context(key):
    structure = ONTOLOGY.structures[key]
    term = structure.terminology
    for code in (term.category, term.type):
        assert code.scheme and code.meaning
        assert re.fullmatch(r"[0-9A-Za-z.\-]+", code.value), f"{key}: code value {code.value!r}"
    if term.modifier is not None:
        assert term.modifier.scheme and term.modifier.value and term.modifier.meaning
    assert len(structure.color) == 3 and all(0 <= c <= 255 for c in structure.color)
    assert structure.kind in ("organ", "tumour")
    assert structure.name
    assert valid_contexts_of(key)


def test_left_and_right_structures_carry_laterality_modifiers():
    assert ONTOLOGY.structures["kidney_left"].terminology.modifier.meaning.lower() == "left"
    assert ONTOLOGY.structures["kidney_right"].terminology.modifier.meaning.lower() == "right"


def test_terminology_tag_has_slicers_seven_fields():
    tag = ONTOLOGY.structures["liver"].terminology.as_slicer_tag()
    fields = tag.split("~")
    assert len(fields) == 7
    assert fields[0] == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert fields[2] == "SCT^10200004^Liver"
    assert fields[4] == "Anatomic codes - DICOM master list"


# ----------------------------------------------------------------------------------- parsing
def test_full_prompt_parses_to_one_prompt():
    assert ONTOLOGY.parse("CT/abdomen/liver") == [Prompt("CT", "abdomen", "liver")]


def test_parsing_ignores_case_and_accepts_synonyms_and_spelling_variants():
    assert ONTOLOGY.parse("ct/Abdomen/Liver Tumor") == [Prompt("CT", "abdomen", "liver_tumour")]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("CT/chest/windpipe", Prompt("CT", "thorax", "trachea")),
        ("ultrasound/abdominal/gall bladder", Prompt("US", "abdomen", "gallbladder")),
        ("fdg-pet/h&n/primary tumor", Prompt("PET", "head_neck", "gtvp")),
        ("MR/brain/gray_matter", Prompt("MRI", "brain", "grey_matter")),
        ("  CT / pelvis / Urinary-Bladder ", Prompt("CT", "pelvis", "bladder")),
    ],
)
def test_synonyms_of_modality_region_and_structure_resolve(text, expected):
    assert ONTOLOGY.parse(text) == [expected]


def test_star_means_every_structure_of_the_region_in_order():
    prompts = ONTOLOGY.parse("MRI/brain/*")
    assert [p.structure for p in prompts] == ONTOLOGY.structures_of("MRI", "brain")
    assert {p.key for p in prompts} >= {"MRI/brain/grey_matter", "MRI/brain/white_matter", "MRI/brain/brain_tumour"}


def test_bare_structure_takes_the_modality_given_separately():
    assert ONTOLOGY.parse("liver", modality="CT") == [Prompt("CT", "abdomen", "liver")]
    assert ONTOLOGY.parse("spleen", modality="mri") == [Prompt("MRI", "abdomen", "spleen")]


def test_region_and_structure_take_the_modality_given_separately():
    assert ONTOLOGY.parse("thorax/aorta", modality="CT") == [Prompt("CT", "thorax", "aorta")]


def test_bare_structure_without_a_modality_is_refused_naming_the_modalities():
    with pytest.raises(UnknownPromptError, match="names no modality") as caught:
        ONTOLOGY.parse("liver")
    assert all(m in str(caught.value) for m in ("CT", "MRI", "PET", "US"))


def test_bare_structure_valid_in_two_regions_is_refused_naming_both():
    with pytest.raises(UnknownPromptError, match="ambiguous") as caught:
        ONTOLOGY.parse("aorta", modality="CT")
    assert "thorax" in str(caught.value) and "abdomen" in str(caught.value)


def test_unknown_structure_is_refused_listing_the_regions_structures():
    with pytest.raises(UnknownPromptError, match="unicorn") as caught:
        ONTOLOGY.parse("CT/abdomen/unicorn")
    message = str(caught.value)
    assert all(key in message for key in ONTOLOGY.structures_of("CT", "abdomen"))


def test_unknown_region_is_refused_listing_the_modalitys_regions():
    with pytest.raises(UnknownPromptError, match="knee") as caught:
        ONTOLOGY.parse("CT/knee/liver")
    assert all(region in str(caught.value) for region in ONTOLOGY.regions_of("CT"))


def test_unknown_modality_is_refused_listing_the_modalities():
    with pytest.raises(UnknownPromptError, match="X-ray") as caught:
        ONTOLOGY.parse("X-ray/abdomen/liver")
    assert all(m in str(caught.value) for m in ("CT", "MRI", "PET", "US"))


def test_structure_not_valid_in_the_region_is_refused_listing_what_is():
    with pytest.raises(UnknownPromptError, match="not a structure of CT brain") as caught:
        ONTOLOGY.parse("CT/brain/liver")
    assert all(key in str(caught.value) for key in ONTOLOGY.structures_of("CT", "brain"))


def test_structure_not_valid_for_the_modality_is_refused():
    with pytest.raises(UnknownPromptError, match="not valid for US"):
        ONTOLOGY.parse("spleen", modality="US")


def test_star_without_a_region_is_refused():
    with pytest.raises(UnknownPromptError, match="needs a region"):
        ONTOLOGY.parse("*", modality="CT")


@pytest.mark.parametrize("text", ["", "   ", "CT//liver", "CT/abdomen/", "/", "CT/abdomen/liver/left"])
def test_empty_parts_or_too_many_parts_are_refused(text):
    with pytest.raises(UnknownPromptError):
        ONTOLOGY.parse(text)


def test_parse_many_drops_repeats_and_keeps_order():
    prompts = ONTOLOGY.parse_many(["CT/abdomen/spleen", "ct/abdomen/liver", "CT/abdomen/splenic"])
    assert [p.key for p in prompts] == ["CT/abdomen/spleen", "CT/abdomen/liver"]


# ------------------------------------------------------------------------------- prompt text
def test_context_prompt_is_the_duplus_sentence():
    assert ONTOLOGY.context_text("CT", "abdomen") == "A computed tomography scan of the abdomen."
    assert ONTOLOGY.context_text("MRI", "head_neck") == "A magnetic resonance imaging scan of the head and neck."


def test_target_prompt_is_the_duplus_sentence():
    assert ONTOLOGY.target_text(Prompt("CT", "abdomen", "liver")) == "A computed tomography scan of a liver."


def test_target_prompt_has_five_distinct_paraphrases_naming_the_structure():
    texts = ONTOLOGY.target_texts(Prompt("PET", "head_neck", "gtvn"))
    assert len(texts) == len(set(texts)) == 5
    assert all("nodal tumour (gtvn)" in text.lower() for text in texts)
    assert all(text[0].isupper() for text in texts)


def test_ultrasound_paraphrases_say_ultrasound_not_us():
    texts = ONTOLOGY.target_texts(Prompt("US", "abdomen", "liver"))
    assert all("ultrasound" in text.lower() for text in texts)
    assert not any(re.search(r"\bUS\b", text) for text in texts)


def test_random_paraphrase_is_one_of_the_five():
    prompt = Prompt("MRI", "brain", "white_matter")
    rng = random.Random(3)
    drawn = {ONTOLOGY.target_text(prompt, rng) for _ in range(50)}
    assert drawn <= set(ONTOLOGY.target_texts(prompt))
    assert len(drawn) > 1


def test_all_texts_cover_every_context_and_target_sentence_once():
    texts = ONTOLOGY.all_texts()
    assert len(texts) == len(set(texts))
    assert {ONTOLOGY.context_text(m, r) for m, r in ONTOLOGY.contexts()} <= set(texts)
    for prompt in ONTOLOGY.all_prompts():
        assert set(ONTOLOGY.target_texts(prompt)) <= set(texts)


# ----------------------------------------------------------------------------------- fuzzing
VOCABULARY = sorted(
    {name for m in ONTOLOGY.modalities.values() for name in [m["name"], *m["synonyms"]]}
    | {name for r in ONTOLOGY.regions.values() for name in [r["name"], *r["synonyms"]]}
    | {name for s in ONTOLOGY.structures.values() for name in [s.name, *s.synonyms]}
    | set(ONTOLOGY.modalities) | set(ONTOLOGY.regions) | set(ONTOLOGY.structures)
    | {"*", "", " ", "unicorn"}
)
word = st.one_of(
    st.sampled_from(VOCABULARY).map(lambda w: w.upper() if len(w) % 2 else w),
    st.text(max_size=12),
)
prompt_like = st.lists(word, min_size=0, max_size=5).map("/".join)
any_modality = st.one_of(st.none(), st.sampled_from(VOCABULARY), st.text(max_size=8))


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(prompt_like, st.text(max_size=40)), modality=any_modality)
def test_any_text_either_parses_to_valid_prompts_or_is_refused_with_unknown_prompt_error(text, modality):
    try:
        prompts = ONTOLOGY.parse(text, modality=modality)
    except UnknownPromptError as error:
        assert str(error)
        return
    assert prompts
    for prompt in prompts:
        assert prompt.structure in ONTOLOGY.structures_of(prompt.modality, prompt.region)


def test_one_structure_asked_for_in_two_regions_is_refused_before_any_work():
    """The thorax and the abdomen both hold the aorta; a segmentation holds one segment per structure."""
    ontology = load_ontology()
    with pytest.raises(UnknownPromptError, match="'aorta' is asked for twice \\(CT/thorax/aorta and CT/abdomen/aorta\\)"):
        ontology.parse_many(["CT/thorax/*", "CT/abdomen/*"])
    assert [p.key for p in ontology.parse_many(["CT/abdomen/aorta", "CT/abdomen/aorta", "CT/abdomen/liver"])] == [
        "CT/abdomen/aorta", "CT/abdomen/liver"]
