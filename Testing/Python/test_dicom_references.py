"""DICOM SEG and RTSTRUCT references: read onto the image grid, and used by evaluate and finetune.

The real RIDER Lung CT crop (``Testing/Data/rider_lung_crop``, CC BY 4.0) holds a chest CT series,
the RTSTRUCT its tumour was contoured in and a DICOM SEG of the same tumour; the evaluation cases map
the tumour to ``CT/thorax/lung_tumour``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine_fixtures import dice, one_thread, save_random_bundle, sphere_volume, write_dicom_series  # noqa: F401
from DuPLUSLib.bundle import load_bundle
from DuPLUSLib.cli import main
from DuPLUSLib.dicom_references import read_dicom_seg, read_reference, read_rtstruct
from DuPLUSLib.errors import InputImageError
from DuPLUSLib.imageio import read_image
from DuPLUSLib.training.decathlon import DatasetError
from DuPLUSLib.training.evaluate import parse_data_spec
from DuPLUSLib.training.finetune import FinetuneSettings, finetune, prepare_cases

pytest.importorskip("highdicom")
pytestmark = pytest.mark.usefixtures("one_thread")
RIDER = Path(__file__).resolve().parents[1] / "Data" / "rider_lung_crop"
MAPPING = {"modality": "CT", "region": "thorax", "segments": {"GTVp_test_man": "lung_tumour"}, "ignore": ["GTVp_test_auto"]}


@pytest.fixture(scope="module")
def rider():
    return read_image(RIDER / "ct")


def dicom_dataset(root: Path, reference: str, mapping: dict = MAPPING) -> Path:
    """A cohort folder with one case: the real series and one reference file."""
    case = root / "rider-1"
    shutil.copytree(RIDER / "ct", case / "ct")
    shutil.copy(RIDER / reference, case / reference)
    (root / "mapping.json").write_text(json.dumps(mapping), encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------ reading
def test_rtstruct_and_seg_of_the_same_tumour_agree_voxel_for_voxel(rider):
    contours = {s.label: s.mask for s in read_rtstruct(RIDER / "rtstruct.dcm", rider)}
    segments = read_dicom_seg(RIDER / "seg.dcm", rider)
    assert sorted(contours) == ["GTVp_test_auto", "GTVp_test_man"]
    assert [s.label for s in segments] == ["Neoplasm, Primary", "Neoplasm, Primary"]
    assert segments[0].property_type == ("SRT", "M-80003", "Neoplasm, Primary")
    # the archive's SEG describes its segments the other way round from the RTSTRUCT's ROIs (see the README)
    assert dice(contours["GTVp_test_auto"], segments[0].mask) > 0.99
    assert dice(contours["GTVp_test_man"], segments[1].mask) > 0.99
    voxel_ml = np.prod(rider.spacing) / 1000
    assert 40 < segments[0].mask.sum() * voxel_ml < 80  # a tumour of some 55 ml within these 26 slices


def test_a_reference_is_told_apart_by_its_sop_class(rider):
    assert [s.description for s in read_reference(RIDER / "seg.dcm", rider)] == ["GTVp_test_man", "GTVp_test_auto"]
    assert {s.label for s in read_reference(RIDER / "rtstruct.dcm", rider)} == {"GTVp_test_man", "GTVp_test_auto"}
    with pytest.raises(InputImageError, match="not a SEG or RTSTRUCT"):
        read_reference(rider.dicom_files[0], rider)


def test_an_rtstruct_drawn_on_another_series_is_refused_naming_both(tmp_path):
    image, _ = sphere_volume(shape_ijk=(16, 16, 6))
    write_dicom_series(image, tmp_path, "1.2.826.0.1.3680043.8.498.9001")
    other = read_image(tmp_path)
    with pytest.raises(InputImageError, match=r"was drawn on series 1\.2\.826\.0\.1\.3680043\.8\.498\.2305.*, but the image is series 1\.2\.826\.0\.1\.3680043\.8\.498\.9001"):
        read_rtstruct(RIDER / "rtstruct.dcm", other)
    with pytest.raises(InputImageError, match="DICOM SEG .* was drawn on series"):
        read_dicom_seg(RIDER / "seg.dcm", other)


# ------------------------------------------------------------------------------------ evaluate and finetune
@pytest.mark.parametrize("reference", ["rtstruct.dcm", "seg.dcm"])
def test_evaluate_scores_a_model_against_dicom_references(tmp_path, rider, reference):
    data = dicom_dataset(tmp_path / "cohort", reference)
    model = save_random_bundle(tmp_path / "model")
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(model), "--data", f"dicom:{data}", "-o", str(report_path),
                 "--device", "cpu"]) == 0
    report = json.loads(report_path.read_text(encoding="utf-8"))
    case = report["cases"][0]
    assert (case["name"], case["modality"], case["region"]) == ("rider-1", "CT", "thorax")
    expected = read_reference(RIDER / reference, rider)
    manual = next(s for s in expected if "GTVp_test_man" in s.names)
    assert case["structures"]["lung_tumour"]["reference_voxels"] == int(manual.mask.sum())


def test_finetune_learns_from_dicom_references(tmp_path):
    data = dicom_dataset(tmp_path / "cohort", "seg.dcm")
    bundle = load_bundle(save_random_bundle(tmp_path / "model"))
    cases = prepare_cases(bundle, [parse_data_spec(f"dicom:{data}")])
    assert [c.name for c in cases] == ["rider-1"]
    result = finetune(bundle, cases, FinetuneSettings(rank=2, steps=2, augment=False, precision="fp32"))
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))


def test_a_reference_segment_the_mapping_does_not_name_is_refused(tmp_path):
    mapping = {"modality": "CT", "region": "thorax", "segments": {"GTVp_test_man": "lung_tumour"}}
    data = dicom_dataset(tmp_path / "cohort", "rtstruct.dcm", mapping)
    source = parse_data_spec(f"dicom:{data}")
    with pytest.raises(DatasetError, match="'GTVp_test_auto' are not in the mapping"):
        list(source.cases())


def test_evaluate_refuses_an_rtstruct_of_another_series_in_the_case(tmp_path, capsys):
    case = tmp_path / "cohort" / "mixed"
    case.mkdir(parents=True)
    image, _ = sphere_volume(shape_ijk=(16, 16, 6))
    write_dicom_series(image, case, "1.2.826.0.1.3680043.8.498.9002")
    shutil.copy(RIDER / "rtstruct.dcm", case / "rtstruct.dcm")
    (tmp_path / "cohort" / "mapping.json").write_text(json.dumps(MAPPING), encoding="utf-8")
    model = save_random_bundle(tmp_path / "model")
    assert main(["evaluate", "--model", str(model), "--data", f"dicom:{tmp_path / 'cohort'}",
                 "-o", str(tmp_path / "report.json"), "--device", "cpu"]) == 2
    assert "was drawn on series" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()
