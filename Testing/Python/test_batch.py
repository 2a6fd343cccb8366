"""``duplus segment IN... -o OUTDIR``: a cohort in one process, resumable, sharded, with a summary.

Real files throughout: volumes written with SimpleITK, a DICOM series written slice by slice, a
small random model saved as a real model folder, and the real ``duplus`` command line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import slicerio

from engine_fixtures import (  # noqa: F401
    one_thread,
    right_handed_oblique_direction,
    save_random_bundle,
    sphere_volume,
    write_dicom_series,
)
from DuPLUSLib.batch import BatchError, expand_inputs, merge_summaries, parse_shard
from DuPLUSLib.cli import main
from DuPLUSLib.imageio import write_image

pytestmark = pytest.mark.usefixtures("one_thread", "keep_signal_handlers")  # duplus segment runs in-process here
PROMPTS = ["-p", "CT/abdomen/liver", "-p", "CT/abdomen/spleen"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_random_bundle(tmp_path_factory.mktemp("models") / "random")


@pytest.fixture
def cohort(tmp_path) -> Path:
    """Three small CT volumes in one folder."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    for seed in range(3):
        image, _ = sphere_volume(shape_ijk=(24, 20, 10), radius_mm=6.0, seed=seed)
        write_image(image, folder / f"case{seed}.nrrd")
    return folder


def run(model: Path, *args: str) -> int:
    return main(["segment", *args, *PROMPTS, "--model", str(model), "--device", "cpu", "--progress", "none"])


def summary_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def voxels(path: Path) -> tuple[np.ndarray, list[str]]:
    segmentation = slicerio.read_segmentation(str(path))
    return np.asarray(segmentation["voxels"]), [s["name"] for s in segmentation["segments"]]


# ------------------------------------------------------------------------------------ the run
def test_a_folder_of_images_gives_one_output_per_case_and_a_summary(cohort, tmp_path, model):
    out = tmp_path / "out"
    assert run(model, str(cohort), "-o", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "case0.json", "case0.seg.nrrd", "case1.json", "case1.seg.nrrd", "case2.json", "case2.seg.nrrd", "summary.csv"]
    rows = summary_rows(out / "summary.csv")
    assert [(r["case_id"], r["structure"]) for r in rows] == [
        (f"case{i}", s) for i in range(3) for s in ("liver", "spleen")]
    assert all(r["status"] == "done" and r["found"] in ("yes", "no") and float(r["seconds"]) > 0 for r in rows)
    report = json.loads((out / "case1.json").read_text(encoding="utf-8"))
    liver = next(r for r in rows if r["case_id"] == "case1" and r["structure"] == "liver")
    assert float(liver["volume_ml"]) == report["segments"][0]["volume_ml"]


def test_a_rerun_skips_finished_cases(cohort, tmp_path, model, capsys):
    out = tmp_path / "out"
    assert run(model, str(cohort), "-o", str(out)) == 0
    (out / "case1.json").unlink()  # as if the run had been killed while writing case1
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("case[02].seg.nrrd")}
    capsys.readouterr()
    assert run(model, str(cohort), "-o", str(out)) == 0
    assert "1 segmented, 2 already done, 0 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("case[02].seg.nrrd")} == stamps
    assert (out / "case1.json").is_file()
    assert len(summary_rows(out / "summary.csv")) == 6


def test_a_rerun_with_other_prompts_or_another_model_redoes_the_cases_and_says_so(cohort, tmp_path, model, capsys,
                                                                                 caplog):
    """Each report records what was asked; a rerun that asks for something else must not pass the
    old results off as its own. The second model has the first one's name but other weights."""
    out = tmp_path / "out"
    assert run(model, str(cohort), "-o", str(out)) == 0
    weights = json.loads((model / "config.json").read_text(encoding="utf-8"))["files"]["weights"]["sha256"]
    request = json.loads((out / "case0.json").read_text(encoding="utf-8"))["request"]
    assert request == {"prompts": ["CT/abdomen/liver", "CT/abdomen/spleen"],
                       "model": {"name": "test-model", "sha256": weights}}
    other = save_random_bundle(tmp_path / "other", seed=1)
    liver_only = ["segment", str(cohort), "-o", str(out), "-p", "CT/abdomen/liver", "--device", "cpu",
                  "--progress", "none"]
    capsys.readouterr()
    for model_folder, changed in ((model, "the prompts changed"), (other, "the model changed")):
        caplog.clear()
        assert main([*liver_only, "--model", str(model_folder)]) == 0
        assert "3 case(s): 3 segmented (of which 3 again: the prompts or the model changed), 0 already done" in capsys.readouterr().out
        assert f"case1: segmenting it again: {changed}" in caplog.text
        assert "3 case(s) segmented again because the prompts or the model changed" in caplog.text
        report = json.loads((out / "case1.json").read_text(encoding="utf-8"))
        assert [s["structure"] for s in report["segments"]] == ["liver"]
        assert report["request"]["model"]["sha256"] == json.loads(
            (model_folder / "config.json").read_text(encoding="utf-8"))["files"]["weights"]["sha256"]
    assert {r["structure"] for r in summary_rows(out / "summary.csv")} == {"liver"}
    caplog.clear()
    assert main([*liver_only, "--model", str(other)]) == 0  # the same request again: nothing to redo
    assert "3 case(s): 0 segmented, 3 already done" in capsys.readouterr().out
    assert "segmenting it again" not in caplog.text


def test_a_report_written_before_requests_were_recorded_is_kept_when_its_prompts_and_model_name_match(
        cohort, tmp_path, model, capsys, caplog):
    """Such a report names its prompts (segments) and its model's name, not its weights: kept when
    those match, redone when it does not even say that much."""
    out = tmp_path / "out"
    assert run(model, str(cohort), "-o", str(out)) == 0
    for case in ("case0", "case1", "case2"):
        path = out / f"{case}.json"
        report = json.loads(path.read_text(encoding="utf-8"))
        del report["request"]
        if case == "case2":
            del report["model"]
        path.write_text(json.dumps(report), encoding="utf-8")
    capsys.readouterr()
    assert run(model, str(cohort), "-o", str(out)) == 0
    assert "3 case(s): 1 segmented (of which 1 again: the prompts or the model changed), 2 already done" in capsys.readouterr().out
    assert "case2: segmenting it again: its report does not say which prompts and model" in caplog.text
    assert "request" in json.loads((out / "case2.json").read_text(encoding="utf-8"))
    capsys.readouterr()
    assert main(["segment", str(cohort), "-o", str(out), "-p", "CT/abdomen/liver", "--model", str(model),
                 "--device", "cpu", "--progress", "none"]) == 0  # other prompts: redone, old reports or not
    assert "3 case(s): 3 segmented (of which 3 again" in capsys.readouterr().out


def test_a_corrupt_case_is_recorded_and_the_others_are_written(cohort, tmp_path, model, capsys):
    (cohort / "broken.nrrd").write_bytes(b"NRRD0004\nthis is not a volume\n")
    out = tmp_path / "out"
    assert run(model, str(cohort), "-o", str(out)) == 4  # some case failed
    rows = summary_rows(out / "summary.csv")
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["case_id"] for r in failed] == ["broken"]
    assert "InputImageError" in failed[0]["error"] and "broken.nrrd" in failed[0]["error"]
    assert {r["case_id"] for r in rows if r["status"] == "done"} == {"case0", "case1", "case2"}
    assert not list(out.glob("broken*"))  # nothing half-written for the failed case


def test_two_shards_give_the_same_outputs_as_one_run(cohort, tmp_path, model):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert run(model, str(cohort), "-o", str(one)) == 0
    assert run(model, str(cohort), "-o", str(sharded), "--shard", "0/2") == 0
    assert sorted(p.name for p in sharded.glob("*.seg.nrrd")) == ["case0.seg.nrrd", "case2.seg.nrrd"]
    assert run(model, str(cohort), "-o", str(sharded), "--shard", "1/2") == 0
    assert main(["merge-shards", str(sharded)]) == 0
    for case in ("case0", "case1", "case2"):
        a, b = voxels(one / f"{case}.seg.nrrd"), voxels(sharded / f"{case}.seg.nrrd")
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]

    def comparable(rows):
        return [{k: v for k, v in r.items() if k not in ("seconds", "output")} for r in rows]

    assert comparable(summary_rows(sharded / "summary.csv")) == comparable(summary_rows(one / "summary.csv"))


def test_a_shard_summary_written_before_the_post_processing_columns_still_merges(tmp_path):
    """Shards of one cohort may be run by two versions; the older summary lacks dropped_ml and check."""
    import csv

    from DuPLUSLib.batch import SUMMARY_COLUMNS

    older = [c for c in SUMMARY_COLUMNS if c not in ("dropped_ml", "check")]
    for shard, case in ((0, "a"), (1, "b")):
        with open(tmp_path / f"summary.shard-{shard}-of-2.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=older if shard == 0 else SUMMARY_COLUMNS)
            writer.writeheader()
            row = dict.fromkeys(older, "") | {"case_index": shard, "case_id": case, "status": "done", "structure": "liver"}
            writer.writerow(row if shard == 0 else row | {"dropped_ml": "1.5", "check": "yes"})
    rows = summary_rows(merge_summaries(tmp_path))
    assert [(r["case_id"], r["dropped_ml"], r["check"]) for r in rows] == [("a", "", ""), ("b", "1.5", "yes")]
    (tmp_path / "summary.shard-0-of-2.csv").write_text("case,volume\na,1\n", encoding="utf-8")
    with pytest.raises(BatchError, match="is not a duplus summary"):
        merge_summaries(tmp_path)


def test_merging_before_every_shard_has_run_names_the_missing_shard(cohort, tmp_path, model):
    out = tmp_path / "out"
    assert run(model, str(cohort), "-o", str(out), "--shard", "1/3") == 0
    with pytest.raises(BatchError, match=r"shard\(s\) 0/3, 2/3 have not written"):
        merge_summaries(out)


def test_outputs_written_below_the_input_folder_are_not_taken_for_new_cases(cohort, model, capsys):
    out = cohort / "results"
    assert run(model, str(cohort), "-o", str(out), "--format", "nifti") == 0
    capsys.readouterr()
    assert run(model, str(cohort), "-o", str(out), "--format", "nifti") == 0
    assert "3 case(s): 0 segmented, 3 already done" in capsys.readouterr().out


def test_a_rerun_in_another_format_writes_that_format(cohort, tmp_path, model):
    out = tmp_path / "out"
    assert run(model, str(cohort), "-o", str(out)) == 0
    assert run(model, str(cohort), "-o", str(out), "--format", "nifti") == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]


def test_a_csv_names_cases_relative_to_itself_with_their_ids(cohort, tmp_path, model):
    table = tmp_path / "cases.csv"
    table.write_text("case_id,input\npatient-7,cohort/case2.nrrd\npatient-3,cohort/case0.nrrd\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["segment", "--inputs", str(table), "-o", str(out), *PROMPTS, "--model", str(model),
                 "--device", "cpu", "--progress", "none", "--format", "nifti"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["patient-3.nii.gz", "patient-7.nii.gz"]
    assert [r["case_id"] for r in summary_rows(out / "summary.csv")][::2] == ["patient-7", "patient-3"]


def test_json_progress_events_carry_the_case(cohort, tmp_path, model, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(cohort), "-o", str(out), *PROMPTS, "--model", str(model), "--device", "cpu",
                 "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["case"] for e in progress} == {"case0", "case1", "case2"}
    assert all(e["cases"] == 3 for e in progress)
    assert [e["case"] for e in events if e["event"] == "case"] == ["case0", "case1", "case2"]
    assert events[-1]["event"] == "done" and events[-1]["done"] == 3


def test_a_folder_of_dicom_series_gives_one_case_per_series(tmp_path, model):
    root = tmp_path / "dicom"
    for index, name in enumerate(("patient1", "patient2")):
        image, _ = sphere_volume(shape_ijk=(16, 16, 6), direction=right_handed_oblique_direction(), seed=index)
        (root / name / "ct").mkdir(parents=True)
        write_dicom_series(image, root / name / "ct", f"1.2.826.0.1.3680043.8.498.{5001 + index}")
    cases = expand_inputs([str(root)])
    assert [(c.case_id, c.is_dicom) for c in cases] == [("patient1_ct", True), ("patient2_ct", True)]
    out = tmp_path / "out"
    assert run(model, str(root), "-o", str(out), "--format", "dicom-seg") == 0
    assert sorted(p.name for p in out.glob("*.dcm")) == ["patient1_ct.dcm", "patient2_ct.dcm"]


# ------------------------------------------------------------------------------------ bad input
def refused(capsys, model, *args: str) -> str:
    assert run(model, *args) == 2
    return capsys.readouterr().err


def test_an_outdir_that_is_a_file_is_refused(cohort, tmp_path, model, capsys):
    target = tmp_path / "out"
    target.write_text("a file", encoding="utf-8")
    assert "is a file; a batch run writes one output per case into a folder" in refused(
        capsys, model, str(cohort), "-o", str(target))
    assert target.read_text(encoding="utf-8") == "a file"


def test_a_csv_without_an_input_column_is_refused_naming_its_columns(tmp_path, model, capsys):
    table = tmp_path / "cases.csv"
    table.write_text("path,id\na.nrrd,1\n", encoding="utf-8")
    message = refused(capsys, model, "--inputs", str(table), "-o", str(tmp_path / "out"))
    assert "has no 'input' column; its columns are: path, id" in message
    assert not (tmp_path / "out").exists()


def test_dicom_seg_for_a_non_dicom_input_is_refused_before_anything_is_written(cohort, tmp_path, model, capsys):
    message = refused(capsys, model, str(cohort), "-o", str(tmp_path / "out"), "--format", "dicom-seg")
    assert "--format dicom-seg needs a DICOM series" in message and "case0.nrrd" in message
    assert not (tmp_path / "out").exists()
    single = tmp_path / "one.dcm"
    assert "needs a DICOM series" in refused(capsys, model, str(cohort / "case0.nrrd"), "-o", str(single))
    assert not single.exists()


@pytest.mark.parametrize("spec", ["2/2", "5/3", "0/0", "-1/2", "1of2"])
def test_a_shard_out_of_range_or_malformed_is_refused(cohort, tmp_path, model, capsys, spec):
    message = refused(capsys, model, str(cohort), "-o", str(tmp_path / "out"), f"--shard={spec}")
    assert "shard" in message and ("out of range" in message or "must be K/N" in message)
    assert not (tmp_path / "out").exists()


def test_shard_specs_count_from_zero():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    with pytest.raises(BatchError, match="K counts from 0 to N-1"):
        parse_shard("4/4")


def test_two_inputs_with_one_case_id_are_refused(tmp_path, model, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        image, _ = sphere_volume(shape_ijk=(12, 12, 6))
        write_image(image, tmp_path / folder / "ct.nrrd")
    message = refused(capsys, model, str(tmp_path / "a" / "ct.nrrd"), str(tmp_path / "b" / "ct.nrrd"),
                      "-o", str(tmp_path / "out"))
    assert "case id 'ct' comes from two inputs" in message
