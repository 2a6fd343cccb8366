"""The model-card experiments' statistics (``experiments/ablation.py``), on hand-made reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "ablation.py"


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(dice_by_case: dict[str, dict[str, float]]) -> dict:
    return {"cases": [{"name": name, "modality": name.split("-")[0], "region": "abdomen",
                       "structures": {s: {"dice": d} for s, d in structures.items()}}
                      for name, structures in dice_by_case.items()]}


def test_an_arm_against_itself_differs_by_nothing(ablation):
    same = report({"CT-1": {"liver": 0.9, "spleen": 0.5}, "CT-2": {"liver": 0.7, "spleen": 0.1}})
    assert ablation.paired_difference(same, same) == {"mean": 0.0, "ci95": [0.0, 0.0], "pairs": 4, "cases": 2}


def test_the_difference_is_paired_by_case_and_structure_and_its_interval_covers_the_case_spread(ablation):
    reference = report({"CT-1": {"liver": 0.9, "spleen": 0.5}, "CT-2": {"liver": 0.7, "spleen": 0.1},
                        "MRI-1": {"brain": 0.8}, "MRI-2": {"brain": 0.6}})
    better = report({"CT-1": {"spleen": 0.6, "liver": 0.9}, "CT-2": {"liver": 0.9, "spleen": 0.1},
                     "MRI-1": {"brain": 0.8}, "MRI-2": {"brain": 0.6}})
    result = ablation.paired_difference(better, reference, resamples=500)
    assert result["mean"] == pytest.approx(0.3 / 6)
    low, high = result["ci95"]
    assert 0.0 <= low < result["mean"] < high <= 0.2 / 3 + 1e-9  # CT-2's +0.2 drawn twice at most


# --------------------------------------------------------------------- issue 11's data ablation
@pytest.fixture(scope="module")
def data_ablation():
    import sys

    sys.path.insert(0, str(SCRIPT.parent))  # it imports the paired bootstrap from ablation.py
    spec = importlib.util.spec_from_file_location("data_ablation_experiment", SCRIPT.parent / "data_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_data_ablation_arms_differ_only_in_their_datasets(data_ablation):
    """A 2 x 2 design over version 4's recipe: with or without synthesis, with or without real images."""
    import yaml

    document = yaml.safe_load((SCRIPT.parents[1] / "configs" / "default-v4.yaml").read_text(encoding="utf-8"))
    arms = {name: data_ablation.arm_config(document, name, 40, "elsewhere/model") for name in data_ablation.ARMS}
    kinds = {name: [d.kind for d in config.datasets] for name, config in arms.items()}
    assert len(kinds["full"]) == len(document["datasets"])
    assert "synth" not in kinds["no_synthesis"] and "decathlon" in kinds["no_synthesis"]
    assert "decathlon" not in kinds["no_real_images"] and "synth" in kinds["no_real_images"]
    assert set(kinds["neither"]) == {"phantom", "mni152"}
    for config in arms.values():
        assert config.training.steps == 40 and config.initial_model == "elsewhere/model"
        assert config.seed == document["seed"] and config.network == arms["full"].network
