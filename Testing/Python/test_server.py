"""``duplus serve`` and its clients, over real HTTP to a real server process on 127.0.0.1.

Nothing is mocked: each server is ``python -m DuPLUSLib.cli serve`` started for the test (one torch
thread, the bundled model), and the clients are the library's own (:mod:`DuPLUSLib.remote`), the
``duplus segment --server`` command, the Segment module's Logic on a slicer-core scene, and plain
``urllib`` requests where a test needs to send what no DuPLUS client would.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server needs the [server] extra")
pytest.importorskip("uvicorn", reason="the server needs the [server] extra")

from DuPLUSLib.errors import InputImageError, ResourceLimitError, UnknownPromptError  # noqa: E402
from DuPLUSLib.imageio import read_image, read_segmentation, write_image  # noqa: E402
from DuPLUSLib.ontology import load_ontology  # noqa: E402
from DuPLUSLib.remote import (  # noqa: E402
    AuthenticationError,
    ProtocolMismatchError,
    ServerClient,
    ServerError,
    ServerUnreachableError,
    describe_server,
    run_job,
)
from DuPLUSLib.samples import sample_volume_path  # noqa: E402
from DuPLUSLib.segment_process import worker_environment  # noqa: E402
from DuPLUSLib.server.cli import is_local_host  # noqa: E402
from engine_fixtures import sphere_volume  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
RIDER = REPOSITORY / "Testing" / "Data" / "rider_lung_crop"  # a real CT series (CC BY 4.0, see its README)
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
SAMPLE = sample_volume_path()
# Bytes no log may ever hold: they are sent as the voxels of a (corrupt) upload.
MARKER = b"DUPLUS-PATIENT-VOXELS-" + secrets.token_hex(8).encode()


# ------------------------------------------------------------------------------------ servers
class RunningServer:
    """A ``duplus serve`` process, its address, key, work folder and log."""

    def __init__(self, folder: Path, *extra: str, key: bool = True):
        self.folder = folder
        self.work_dir = folder / "work"
        self.key = secrets.token_urlsafe(32) if key else None
        command = [sys.executable, "-m", "DuPLUSLib.cli", "serve", "--port", "0", "--device", "cpu",
                   "--threads", "1", "--work-dir", str(self.work_dir), *extra]
        if self.key:
            key_file = folder / "key.txt"
            key_file.write_text(self.key + "\n", encoding="utf-8")
            key_file.chmod(0o600)
            command += ["--api-key-file", str(key_file)]
        self.log_path = folder / "server.log"
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        env=worker_environment(threads=1), start_new_session=True)
        self.url = self._wait_until_listening()

    def _wait_until_listening(self) -> str:
        lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            pytest.fail(f"the server did not start; its log:\n{self.log()}")
        found = re.search(r"listening on (\S+)", line)
        assert found, line
        return found.group(1)

    def client(self, **options) -> ServerClient:
        return ServerClient(self.url, api_key=self.key, **options)

    def job_folders(self) -> list[Path]:
        """Everything in the server's work folder except its own pid file."""
        return [p for root in self.work_dir.glob("duplus-serve-*") for p in root.iterdir() if p.name != "server.pid"]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with the bundled model; its upload limit sits just above the sample's size."""
    limit_mb = 1.25 * SAMPLE.stat().st_size / 2**20
    running = RunningServer(tmp_path_factory.mktemp("server"), "--max-upload-mb", f"{limit_mb:.3f}")
    yield running
    running.stop()


@pytest.fixture
def small_volume(tmp_path) -> Path:
    image, _ = sphere_volume(shape_ijk=(20, 18, 12), spacing=(4.0, 4.0, 4.0), radius_mm=20.0)
    return write_image(image, tmp_path / "small.nrrd")


def raw_request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    """A plain urllib request; returns (status, JSON answer)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_for(condition, timeout_s: float = RUN_TIMEOUT_S, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail("timed out waiting")


def wait_for_stage(client: ServerClient, job_id: str, stage: str) -> None:
    seen: list[str] = []

    def reached() -> bool:
        status = client.status(job_id)
        seen[:] = [e.get("stage") for e in status["events"] if e.get("event") == "progress"]
        assert status["state"] in ("queued", "running"), status
        return stage in seen

    wait_for(reached)


def masks_of(path: Path) -> dict[str, np.ndarray]:
    return read_segmentation(path, load_ontology())[1]


# ------------------------------------------------------------------------------------ the round trip
@pytest.mark.slow
def test_submit_poll_download_gives_the_local_workers_segmentation_of_the_sample(server, tmp_path):
    """What the product owner's check runs: ``duplus segment ... --server``; then the same request
    through the local worker. The two segmentations must be the same, voxel for voxel."""
    prompts = ["-p", "CT/abdomen/liver", "-p", "CT/abdomen/spleen"]
    remote = subprocess.run(
        [sys.executable, "-m", "DuPLUSLib.cli", "segment", str(SAMPLE), *prompts, "-o", str(tmp_path / "remote.seg.nrrd"),
         "--report", str(tmp_path / "remote.json"), "--server", server.url,
         "--api-key-file", str(server.folder / "key.txt"), "--progress", "json"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=worker_environment(threads=1),
    )
    assert remote.returncode == 0, remote.stderr
    events = [json.loads(line) for line in remote.stdout.splitlines()]
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages[0] == "uploading" and "queued" in stages and "inference" in stages and stages[-1] == "downloading"
    assert events[-1]["event"] == "done" and [s["structure"] for s in events[-1]["segments"]] == ["liver", "spleen"]

    import torch

    from DuPLUSLib.worker import Worker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs
    try:
        local_events: list[dict] = []
        Worker(local_events.append).handle_request({
            "id": "local", "input": str(SAMPLE), "prompts": ["CT/abdomen/liver", "CT/abdomen/spleen"],
            "output": str(tmp_path / "local.seg.nrrd"), "device": "cpu"})
    finally:
        torch.set_num_threads(threads)
    assert local_events[-1]["event"] == "done", local_events[-1]
    remote_masks, local_masks = masks_of(tmp_path / "remote.seg.nrrd"), masks_of(tmp_path / "local.seg.nrrd")
    assert sorted(remote_masks) == ["liver", "spleen"]
    for key in remote_masks:
        assert remote_masks[key].any()
        np.testing.assert_array_equal(remote_masks[key], local_masks[key], err_msg=key)
    report = json.loads((tmp_path / "remote.json").read_text(encoding="utf-8"))
    assert report["input"]["path"] == str(SAMPLE.resolve()) and report["output"] == str((tmp_path / "remote.seg.nrrd").resolve())
    assert server.job_folders() == [], "the job's files stayed on the server after the download"


def test_health_info_and_ontology_describe_the_server(server):
    client = server.client()
    assert client.health()["protocol"] == 1
    info = client.info()
    assert info["model"]["name"] == "duplus-default" and info["device"] == "cpu"
    assert "duplus-default" in describe_server(info) and "cpu" in describe_server(info)
    ontology = client.ontology()
    assert "liver" in ontology["hierarchy"]["CT"]["abdomen"] and ontology["structures"]["liver"]["name"] == "liver"
    status, answer = raw_request(server.url + "/v1/health")  # open: for load balancers
    assert status == 200 and answer["service"] == "duplus" and "model" not in answer


def test_test_connection_shows_the_servers_model_and_device_or_what_is_wrong(server):
    pytest.importorskip("slicer")
    import DuPLUSSegment

    logic = DuPLUSSegment.DuPLUSSegmentLogic()
    line = logic.testConnection(server.url, server.key)
    assert "model 'duplus-default' on cpu" in line and "DuPLUS 0.1.0" in line
    with pytest.raises(AuthenticationError):
        logic.testConnection(server.url, "wrong-key-" * 3)
    assert logic.describeServer(server.url, "wrong-key-" * 3).startswith("Failed: this server needs its API key")
    with pytest.raises(ServerUnreachableError):
        logic.testConnection("http://127.0.0.1:9", server.key)
    assert not logic.isBusy and logic.workerPid is None  # nothing was started here


@pytest.mark.slow
def test_a_logic_run_on_the_server_imports_the_engines_segmentation(server, mrml_scene):
    slicer = pytest.importorskip("slicer")
    import DuPLUSSegment
    from DuPLUSLib import mrml
    from DuPLUSLib.inference import Segmenter

    image, _ = sphere_volume(shape_ijk=(20, 18, 12), spacing=(4.0, 4.0, 4.0), radius_mm=20.0)
    volume = mrml.volume_node_from_image(image, "phantom")
    logic = DuPLUSSegment.DuPLUSSegmentLogic()
    stages: list[str] = []
    try:
        logic.segmentAsync(volume, ["CT/abdomen/liver", "CT/abdomen/spleen"], server=server.url, apiKey=server.key,
                           onProgress=lambda stage, fraction, message: stages.append(stage))
        assert logic.isBusy and logic.workerPid is None
        logic.wait(timeout=RUN_TIMEOUT_S)
    finally:
        logic.shutdown()
    assert {"uploading", "queued", "inference", "downloading", "importing"} <= set(stages)
    segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    segments = mrml.imported_segments(segmentation)
    ontology = load_ontology()
    assert [s.structure for s in segments] == ["liver", "spleen"]
    assert all(s.terminology == ontology.structures[s.structure].terminology.as_slicer_tag() for s in segments)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segmenter = Segmenter(device="cpu")
        expected = segmenter.segment(image, segmenter.parse_prompts(["CT/abdomen/liver", "CT/abdomen/spleen"]))
    finally:
        torch.set_num_threads(threads)
    for segment, engine in zip(segments, expected.segments):
        imported = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment.segment_id, volume) > 0
        np.testing.assert_array_equal(imported, engine.mask, err_msg=segment.name)
    assert wait_for(lambda: server.job_folders() == [], timeout_s=10)


# ------------------------------------------------------------------------------------ cancel and queue
@pytest.mark.slow
def test_cancelling_mid_run_stops_the_job_and_leaves_no_temporary_files(server):
    client = server.client()
    job = client.submit(SAMPLE, ["CT/abdomen/*"])
    wait_for_stage(client, job["id"], "inference")
    assert len(server.job_folders()) == 1
    assert client.cancel(job["id"])["state"] == "cancelling"
    wait_for(lambda: client.status(job["id"])["state"] != "running", timeout_s=60)
    status = client.status(job["id"])
    assert status["state"] == "cancelled"
    assert status["events"][-1]["error"] == "CancelledError"
    assert server.job_folders() == []


@pytest.mark.slow
def test_cancel_in_slicer_stops_the_server_job_and_leaves_the_scene(server, mrml_scene):
    pytest.importorskip("slicer")
    import DuPLUSSegment
    from DuPLUSLib import mrml

    volume = mrml.volume_node_from_image(read_image(SAMPLE), "sample")
    before = scene_snapshot(mrml_scene)
    logic = DuPLUSSegment.DuPLUSSegmentLogic()
    outcome: list = []
    stages: list[str] = []
    try:
        logic.segmentAsync(volume, ["CT/abdomen/*"], server=server.url, apiKey=server.key,
                           onProgress=lambda stage, fraction, message: stages.append(stage),
                           onFinished=outcome.append, onError=outcome.append,
                           onCancelled=lambda: outcome.append("cancelled"))
        folder = logic._workFolder
        wait_for(lambda: logic.poll() and "inference" in stages)
        logic.cancel()
        assert outcome == ["cancelled"] and not logic.isBusy
        assert not Path(folder).exists()
    finally:
        logic.shutdown()
    assert scene_snapshot(mrml_scene) == before
    wait_for(lambda: server.job_folders() == [] and server.client().info()["queue"]["running"] == 0, timeout_s=60)


@pytest.mark.slow
def test_two_clients_queue_one_job_at_a_time(server, small_volume):
    first, second = server.client(), server.client()
    running = first.submit(SAMPLE, ["CT/abdomen/*"])
    wait_for_stage(first, running["id"], "inference")
    waiting = second.submit(small_volume, ["CT/abdomen/liver"])
    assert waiting["position"] == 1
    status = second.status(waiting["id"])
    assert status["state"] == "queued" and status["position"] == 1
    assert status["events"][-1]["stage"] == "queued" and "1 job ahead" in status["events"][-1]["message"]
    third = second.submit(small_volume, ["CT/abdomen/spleen"])
    assert third["position"] == 2 and len(server.job_folders()) == 3
    assert second.cancel(third["id"])["state"] == "cancelled"  # a queued job goes at once, with its files
    assert len(server.job_folders()) == 2
    time.sleep(1.0)
    assert second.status(waiting["id"])["state"] == "queued", "the second job started while the first ran"
    first.cancel(running["id"])
    wait_for(lambda: second.status(waiting["id"])["state"] == "done")
    assert first.status(running["id"])["state"] == "cancelled"
    positions = [e["position"] for e in second.status(waiting["id"])["events"] if e.get("stage") == "queued"]
    assert positions[0] == 1 and positions[-1] == 0
    second.cancel(waiting["id"])  # removes its result from the server
    assert server.job_folders() == []


# ------------------------------------------------------------------------------------ security
def test_a_wrong_or_missing_key_gets_401_and_the_request_does_nothing(server, small_volume):
    accepted = server.client().info()["queue"]["accepted"]
    url = server.url + "/v1/jobs?prompt=CT/abdomen/liver&format=nrrd"
    body = small_volume.read_bytes()
    for headers in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Authorization": server.key},
                    {"Authorization": "Bearer " + server.key[:-1]}):
        status, answer = raw_request(url, "POST", body, {"Content-Type": "application/octet-stream", **headers})
        assert status == 401 and answer["error"] == "AuthenticationError", headers
    assert server.job_folders() == []
    assert server.client().info()["queue"]["accepted"] == accepted
    with pytest.raises(AuthenticationError, match="API key"):
        ServerClient(server.url, api_key="not-the-key-" * 3).check()
    assert "refused POST /v1/jobs" in server.log()


def test_no_parameter_can_name_a_server_path(server, small_volume):
    key = {"Authorization": f"Bearer {server.key}"}
    status, answer = raw_request(server.url + "/v1/jobs?prompt=CT/abdomen/liver&output=/tmp/stolen.seg.nrrd",
                                 "POST", small_volume.read_bytes(), key)
    assert status == 400 and answer["error"] == "ProtocolError" and "'output'" in answer["message"]
    status, answer = raw_request(server.url + "/v1/info?model=/etc", headers=key)
    assert status == 400 and "'model'" in answer["message"]
    status, answer = raw_request(server.url + "/v1/jobs/..%2F..%2Fetc%2Fpasswd", headers=key)
    assert status == 404
    assert server.job_folders() == []


def test_a_non_local_host_is_refused_without_an_api_key(tmp_path):
    result = subprocess.run([sys.executable, "-m", "DuPLUSLib.cli", "serve", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, env=worker_environment(threads=1))
    assert result.returncode == 2 and "refusing to listen on '0.0.0.0' without an API key" in result.stderr
    weak = tmp_path / "weak.txt"
    weak.write_text("hunter2pw\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "DuPLUSLib.cli", "serve", "--api-key-file", str(weak)],
                            capture_output=True, text=True, timeout=60, env=worker_environment(threads=1))
    assert result.returncode == 2 and "at least 16" in result.stderr and "hunter2pw" not in result.stderr
    assert is_local_host("127.0.0.1") and is_local_host("localhost") and is_local_host("::1")
    assert not is_local_host("0.0.0.0") and not is_local_host("10.1.2.3") and not is_local_host("gpu.hospital.org")


@pytest.mark.parametrize("minutes", ["0", "0.5", "nan"])
def test_keeping_results_less_than_a_minute_is_refused(tmp_path, minutes):
    """0 would remove a result straight after its job, before its client could download it."""
    result = subprocess.run([sys.executable, "-m", "DuPLUSLib.cli", "serve", "--port", "0", "--work-dir",
                             str(tmp_path), "--keep-results-min", minutes],
                            capture_output=True, text=True, timeout=60, env=worker_environment(threads=1))
    assert result.returncode == 2 and f"--keep-results-min must be at least 1, not {float(minutes)}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_result_kept_longer_than_an_hour_is_known_while_its_files_stay_and_goes_with_them(tmp_path):
    """``--keep-results-min 120``: the job must answer (not 404) as long as its result is on disk, and
    no folder may outlive the job. Hours cannot pass in a test, so the queue is driven here, in this
    process, with the job's end moved back in time; its sweep needs no model, none is loaded."""
    from DuPLUSLib.server.jobs import JobQueue, JobState
    from DuPLUSLib.server.protocol import JobNotFoundError

    jobs = JobQueue(tmp_path, None, "cpu", keep_results_s=120 * 60.0)
    try:
        assert jobs.forget_after_s >= jobs.keep_results_s
        job = jobs.new_job(["CT/abdomen/liver"], None, ".nrrd")
        job.input_path.write_bytes(b"scan")
        jobs.enqueue(job)
        with jobs._lock:
            jobs._waiting.remove(job.id)
            job.result_path.write_bytes(b"result")
            jobs._end(job, JobState.DONE)
            job.finished = time.time() - 90 * 60  # past the old fixed forget_after_s (60 min), within keep
            jobs._sweep()
        assert jobs.get(job.id) is job and jobs.result_file(job.id, "seg.nrrd") == job.result_path
        with jobs._lock:
            job.finished = time.time() - 150 * 60
            jobs._sweep()
        with pytest.raises(JobNotFoundError):
            jobs.get(job.id)
        assert not job.folder.exists()
    finally:
        jobs.stop()
    assert not jobs.root.exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_with_uvicorns_certificate_options(tmp_path):
    """--ssl-certfile/--ssl-keyfile serve https; a client trusts a hospital's own authority via cafile."""
    cert, key = tmp_path / "cert.pem", tmp_path / "cert-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    running = RunningServer(tmp_path, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    try:
        assert running.url.startswith("https://127.0.0.1:")
        assert running.client(cafile=str(cert)).check()["model"]["name"] == "duplus-default"
        with pytest.raises(ServerUnreachableError, match="TLS connection failed"):
            running.client().check()  # a certificate nobody vouches for is refused
    finally:
        running.stop()


# ------------------------------------------------------------------------------------ bad input
def test_an_upload_over_the_size_limit_is_refused_with_a_clear_message(server, tmp_path):
    limit = server.client().info()["limits"]["max_upload_bytes"]
    key = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/octet-stream"}
    status, answer = raw_request(server.url + "/v1/jobs?prompt=CT/abdomen/liver", "POST", b"\0" * (limit + 1), key)
    assert status == 413 and answer["error"] == "ResourceLimitError"
    assert "at most" in answer["message"] and "--max-upload-mb" in answer["message"]
    chunks = iter([b"\0" * 65536] * (limit // 65536 + 2))  # no Content-Length: cut off while streaming
    status, answer = raw_request(server.url + "/v1/jobs?prompt=CT/abdomen/liver", "POST", chunks, key)
    assert status == 413 and answer["error"] == "ResourceLimitError"
    big = tmp_path / "big.nrrd"
    big.write_bytes(b"\0" * (limit + 1))
    with pytest.raises(ResourceLimitError, match="the server takes at most"):
        run_job(server.client(), big, ["CT/abdomen/liver"], tmp_path / "out.seg.nrrd")
    assert server.job_folders() == [] and not (tmp_path / "out.seg.nrrd").exists()


def test_a_corrupt_upload_is_refused_and_nothing_stays_on_the_server(server, tmp_path):
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 64 64 64\nencoding: raw\n\n" + MARKER * 10)
    with pytest.raises(InputImageError, match="cannot be read as a nrrd image"):
        server.client().submit(corrupt, ["CT/abdomen/liver"])
    noise = tmp_path / "noise.nii.gz"
    noise.write_bytes(MARKER + os.urandom(2048))
    with pytest.raises(InputImageError, match="corrupt"):
        server.client().submit(noise, ["CT/abdomen/liver"])
    assert server.job_folders() == []


@pytest.mark.parametrize("fmt, data_field", [
    ("nrrd", "data file: {raw}"),
    ("nrrd", "DataFile: /dev/zero"),
    ("mha", "ElementDataFile = {raw}"),
], ids=["nhdr-data-file", "nhdr-dev-zero", "mhd-element-data-file"])
def test_an_upload_whose_header_names_a_file_on_the_server_is_refused(server, tmp_path, fmt, data_field):
    """A detached header (.nhdr, .mhd) sent as .nrrd or .mha names where its voxels are: a path the
    server would open. Here that path holds a valid volume on the server's own disk; the upload is
    refused from its header (HTTP 422) before anything reads it, and nothing is queued."""
    from DuPLUSLib.server.jobs import check_upload

    image, _ = sphere_volume(shape_ijk=(20, 18, 12), spacing=(4.0, 4.0, 4.0), radius_mm=20.0)
    raw = tmp_path / "server-side.raw"
    raw.write_bytes(np.ascontiguousarray(image.array, dtype="<i2").tobytes())
    field = data_field.format(raw=raw)
    if fmt == "nrrd":
        header = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 20 18 12\nspacings: 4 4 4\nencoding: raw\n"
                  f"endian: little\n{field}\n")
    else:
        header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                  f"DimSize = 20 18 12\nElementSpacing = 4 4 4\nElementType = MET_SHORT\n{field}\n")
    accepted = server.client().info()["queue"]["accepted"]
    status, answer = raw_request(server.url + f"/v1/jobs?prompt=CT/abdomen/liver&format={fmt}", "POST",
                                 header.encode(), {"Authorization": f"Bearer {server.key}"})
    assert status == 422 and answer["error"] == "InputImageError", answer
    assert "does not hold its image data" in answer["message"]
    assert "save the volume as a single .nrrd/.nii.gz/.mha file with its data inside" in answer["message"].lower()
    assert server.job_folders() == [] and server.client().info()["queue"]["accepted"] == accepted
    attached = write_image(image, tmp_path / "attached.mha")  # ElementDataFile = LOCAL: the data follows
    assert check_upload(attached, "mha", 10**6) == (20, 18, 12)


def test_a_nifti_upload_is_segmented_like_the_same_volume_in_nrrd(server, tmp_path):
    image, _ = sphere_volume(shape_ijk=(20, 18, 12), spacing=(4.0, 4.0, 4.0), radius_mm=20.0)
    results = {}
    for name in ("volume.nrrd", "volume.nii.gz"):
        source = write_image(image, tmp_path / name)
        done = run_job(server.client(), source, ["CT/abdomen/liver"], tmp_path / f"{name}.seg.nrrd")
        results[name] = masks_of(Path(done["output"]))["liver"]
    np.testing.assert_array_equal(results["volume.nrrd"], results["volume.nii.gz"])
    assert server.job_folders() == []


def segment_on(server: RunningServer, *arguments: str) -> int:
    from DuPLUSLib.cli import main

    return main(["segment", *arguments, "--server", server.url, "--api-key-file", str(server.folder / "key.txt"),
                 "--progress", "none"])


@pytest.mark.slow
def test_nifti_and_dicom_seg_are_written_here_from_the_servers_segmentation(server, tmp_path, keep_signal_handlers):
    """The real RIDER DICOM series: the server sees only an NRRD of it; the DICOM SEG, which must
    reference the series' own UIDs, and the NIfTI are written on this side from the downloaded
    segmentation, and hold exactly its masks, in the input's geometry."""
    import highdicom
    import nibabel as nib
    import pydicom

    from DuPLUSLib.dicom_references import read_dicom_seg
    from DuPLUSLib.formats import read_label_table

    rider = read_image(RIDER / "ct")
    prompts = ["-p", "CT/thorax/heart", "-p", "CT/thorax/lung_right"]
    for name in ("rider.seg.nrrd", "rider.nii.gz", "rider.dcm"):
        assert segment_on(server, str(RIDER / "ct"), *prompts, "-o", str(tmp_path / name)) == 0, name
    masks = masks_of(tmp_path / "rider.seg.nrrd")
    assert masks["lung_right"].any()

    loaded = nib.load(str(tmp_path / "rider.nii.gz"))
    np.testing.assert_allclose(loaded.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ rider.ijk_to_lps, atol=1e-4)
    labels = np.asarray(loaded.dataobj).transpose(2, 1, 0)
    table = read_label_table(tmp_path / "rider.nii.gz")
    assert {value: entry["structure"] for value, entry in table.items()} == {1: "heart", 2: "lung_right"}
    assert all(isinstance(entry["confidence"], float) for entry in table.values()), "the server's confidences are lost"
    np.testing.assert_array_equal(labels == 2, masks["lung_right"])
    np.testing.assert_array_equal(labels == 1, masks["heart"] & ~masks["lung_right"])

    document = pydicom.dcmread(tmp_path / "rider.dcm")
    source = pydicom.dcmread(rider.dicom_files[0], stop_before_pixels=True)
    assert document.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert highdicom.seg.segread(str(tmp_path / "rider.dcm")).get_segment_description(2).TrackingID == "lung_right"
    back = read_dicom_seg(tmp_path / "rider.dcm", rider)
    assert [segment.label for segment in back] == ["heart", "right lung"]
    for segment, key in zip(back, ("heart", "lung_right")):
        np.testing.assert_array_equal(segment.mask, masks[key], err_msg=key)
    assert server.job_folders() == []


@pytest.mark.slow
def test_a_batch_runs_case_by_case_on_the_server_and_resumes(server, tmp_path, keep_signal_handlers):
    """A folder of two volumes with --server: one output and report per case, the summary table,
    the same masks as one job each; run again, both are found done and nothing is sent."""
    from DuPLUSLib.batch import read_summary

    cases = tmp_path / "cases"
    cases.mkdir()
    for number, radius in ((1, 16.0), (2, 24.0)):
        image, _ = sphere_volume(shape_ijk=(20, 18, 12), spacing=(4.0, 4.0, 4.0), radius_mm=radius)
        write_image(image, cases / f"case{number}.nrrd")
    outdir = tmp_path / "out"
    assert segment_on(server, str(cases), "-p", "CT/abdomen/liver", "-o", str(outdir)) == 0
    rows = read_summary(outdir / "summary.csv")
    assert [(row["case_id"], row["status"], row["structure"]) for row in rows] == [
        ("case1", "done", "liver"), ("case2", "done", "liver")]
    for case in ("case1", "case2"):
        single = run_job(server.client(), cases / f"{case}.nrrd", ["CT/abdomen/liver"], tmp_path / f"{case}.seg.nrrd")
        np.testing.assert_array_equal(masks_of(outdir / f"{case}.seg.nrrd")["liver"], masks_of(Path(single["output"]))["liver"])
        assert json.loads((outdir / f"{case}.json").read_text(encoding="utf-8"))["segments"][0]["structure"] == "liver"
    accepted = server.client().info()["queue"]["accepted"]
    assert segment_on(server, str(cases), "-p", "CT/abdomen/liver", "-o", str(outdir)) == 0
    assert server.client().info()["queue"]["accepted"] == accepted, "finished cases were sent again"
    assert server.job_folders() == []


def test_the_server_offers_the_result_as_nifti_and_explains_why_not_as_dicom_seg(server, small_volume, tmp_path):
    """For clients that are not DuPLUS (curl, a PACS bridge): the label map and its table, written
    on the server from the job's .seg.nrrd on first request, agree with it voxel for voxel."""
    import nibabel as nib

    from DuPLUSLib.server.protocol import UnsupportedFormatError

    client = server.client()
    job = client.submit(small_volume, ["CT/abdomen/liver", "CT/abdomen/spleen"])
    wait_for(lambda: client.status(job["id"])["state"] == "done")
    try:
        masks = masks_of(client.download_result(job["id"], tmp_path / "result.seg.nrrd"))
        labels_path = client.download_result(job["id"], tmp_path / "result.nii.gz", "nii.gz")
        table = json.loads(client.download_result(job["id"], tmp_path / "result.labels.json", "labels.json").read_bytes())
        with pytest.raises(UnsupportedFormatError, match="only the client holds"):
            client.download_result(job["id"], tmp_path / "result.dcm", "dcm")
    finally:
        client.cancel(job["id"])
    labels = np.asarray(nib.load(str(labels_path)).dataobj).transpose(2, 1, 0)
    assert {value: entry["structure"] for value, entry in table["labels"].items()} == {"1": "liver", "2": "spleen"}
    np.testing.assert_array_equal(labels == 2, masks["spleen"])
    np.testing.assert_array_equal(labels == 1, masks["liver"] & ~masks["spleen"])
    assert not (tmp_path / "result.dcm").exists() and server.job_folders() == []


def test_a_batch_with_a_wrong_key_stops_before_any_upload(server, tmp_path, keep_signal_handlers):
    cases = tmp_path / "cases"
    cases.mkdir()
    image, _ = sphere_volume(shape_ijk=(20, 18, 12), spacing=(4.0, 4.0, 4.0))
    write_image(image, cases / "case1.nrrd")
    write_image(image, cases / "case2.nrrd")
    (tmp_path / "wrong.txt").write_text("w" * 40, encoding="utf-8")
    accepted = server.client().info()["queue"]["accepted"]
    from DuPLUSLib.cli import main

    code = main(["segment", str(cases), "-p", "CT/abdomen/liver", "-o", str(tmp_path / "out"), "--server", server.url,
                 "--api-key-file", str(tmp_path / "wrong.txt"), "--progress", "none"])
    assert code == 2
    assert server.client().info()["queue"]["accepted"] == accepted
    assert not list((tmp_path / "out").glob("*.seg.nrrd"))


def test_a_job_that_fails_on_the_server_reports_its_error_and_leaves_no_files(server, tmp_path):
    """A volume whose header is fine but which the engine refuses (every voxel the same)."""
    image, _ = sphere_volume(shape_ijk=(20, 18, 12), spacing=(4.0, 4.0, 4.0))
    constant = write_image(image.with_array(np.full_like(image.array, 40)), tmp_path / "constant.nrrd")
    with pytest.raises(InputImageError, match="constant"):
        run_job(server.client(), constant, ["CT/abdomen/liver"], tmp_path / "out.seg.nrrd")
    assert server.job_folders() == [] and not (tmp_path / "out.seg.nrrd").exists()


def test_an_unknown_prompt_is_refused_before_the_upload_is_kept(server, small_volume):
    accepted = server.client().info()["queue"]["accepted"]
    with pytest.raises(UnknownPromptError, match="choose one of"):
        server.client().submit(small_volume, ["CT/abdomen/unicorn"])
    assert server.job_folders() == [] and server.client().info()["queue"]["accepted"] == accepted


def test_a_volume_with_too_many_voxels_is_refused(tmp_path):
    running = RunningServer(tmp_path, "--max-voxels", "0.001")  # 1000 voxels
    try:
        image, _ = sphere_volume(shape_ijk=(20, 18, 12))
        path = write_image(image, tmp_path / "volume.nrrd")
        with pytest.raises(ResourceLimitError, match="at most 0 M|--max-voxels"):
            running.client().submit(path, ["CT/abdomen/liver"])
        assert running.job_folders() == []
    finally:
        running.stop()
    assert not list(running.work_dir.glob("duplus-serve-*")), "the server left its work folder behind"


def test_an_unreachable_server_or_a_wrong_address_gets_a_clear_error(server, small_volume, tmp_path):
    with pytest.raises(ServerUnreachableError, match="connection refused"):
        ServerClient("http://127.0.0.1:9", api_key="k" * 20).check()
    with pytest.raises(ServerUnreachableError, match="host name 'no-such-host.invalid' is unknown"):
        ServerClient("http://no-such-host.invalid:8000").check()
    with pytest.raises(ServerError, match="not an http:// or https:// address"):
        ServerClient("gpu-server:8000")
    with pytest.raises(ServerError, match="check the address"):
        ServerClient(server.url + "/not-duplus", api_key=server.key).check()
    result = subprocess.run(
        [sys.executable, "-m", "DuPLUSLib.cli", "segment", str(small_volume), "-p", "CT/abdomen/liver",
         "-o", str(tmp_path / "out.seg.nrrd"), "--server", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120, env=worker_environment(threads=1))
    assert result.returncode == 2 and "cannot reach the DuPLUS server" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.seg.nrrd").exists()


@pytest.mark.parametrize("download", [False, True], ids=["json", "download"])
@pytest.mark.parametrize("answer, why", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"service\"",
     "IncompleteRead|bytes before the end of the result"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n", "no answer within"),
], ids=["cut", "stalled"])
def test_an_answer_cut_or_stalled_mid_body_is_an_unreachable_server_not_a_traceback(tmp_path, answer, why, download):
    """A loopback socket that sends the headers and then drops the connection, or stalls past the
    client's timeout: the same class as a server that never answered, so the runner can retry."""
    import socket as sockets

    listener = sockets.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stalled = threading.Event()

    def serve_once() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(answer)
            if why.startswith("no answer"):
                stalled.wait(10)  # keep the connection open, send nothing more

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServerUnreachableError, match=why):
            if download:
                ServerClient(f"http://127.0.0.1:{port}", timeout_s=1.0).download_result("j1", tmp_path / "r.seg.nrrd")
            else:
                ServerClient(f"http://127.0.0.1:{port}", timeout_s=1.0).health()
        assert list(tmp_path.iterdir()) == [], "a cut download left a file behind"
    finally:
        stalled.set()
        thread.join(10)
        listener.close()


def test_a_server_of_another_protocol_version_is_refused_naming_both(server):
    with pytest.raises(ProtocolMismatchError) as refused:
        server.client(protocol=0).check()
    assert "protocol 0" in str(refused.value) and "protocol 1" in str(refused.value)
    status, answer = raw_request(server.url + "/v1/info", headers={
        "Authorization": f"Bearer {server.key}", "X-DuPLUS-Protocol": "2", "X-DuPLUS-Version": "9.0.0"})
    assert status == 400 and answer["error"] == "ProtocolMismatchError"
    assert "protocol 2 (DuPLUS 9.0.0)" in answer["message"] and "protocol 1" in answer["message"]


def test_remote_only_options_are_refused_with_the_reason(small_volume, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "DuPLUSLib.cli", "segment", str(small_volume), "-p", "CT/abdomen/liver",
         "-o", str(tmp_path / "out.seg.nrrd"), "--server", "http://127.0.0.1:9", "--model", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=worker_environment(threads=1))
    assert result.returncode == 2 and "--model cannot be used with --server" in result.stderr
    result = subprocess.run(  # checked here, before the (unreachable) server is asked anything
        [sys.executable, "-m", "DuPLUSLib.cli", "segment", str(small_volume), "-p", "CT/abdomen/liver",
         "-o", str(tmp_path / "out.dcm"), "--server", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120, env=worker_environment(threads=1))
    assert result.returncode == 2 and "--format dicom-seg needs a DICOM series" in result.stderr
    assert "cannot reach" not in result.stderr and not (tmp_path / "out.dcm").exists()


# ------------------------------------------------------------------------------------ prognosis
def test_prognosis_predictions_come_through_the_same_server(server):
    from DuPLUSLib.prognosis.ehr import EHRValidationError

    client = server.client()
    answer = client.predict_prognosis({"age": 63, "stage": "III"}, plot=True)
    readout = answer["readout"]
    assert isinstance(readout["risk_score"], float) and readout["risk_group"] and readout["sentence"]
    assert answer["reference"]["curves"] and answer["plot_png"]
    with pytest.raises(EHRValidationError, match="stage"):
        client.predict_prognosis({"age": 63, "stage": "VII"})


def test_the_prognosis_logic_predicts_on_the_server_and_shows_the_same_readout(server, mrml_scene, tmp_path):
    """Console use of the Prognosis module's Logic with ``server=``: the same callbacks and report
    as a local prediction, shown as the same table; an image-feature request is refused at once."""
    pytest.importorskip("slicer")
    import DuPLUSPrognosis

    from DuPLUSLib import mrml
    from DuPLUSLib.imageio import VolumeImage
    from DuPLUSLib.prognosis.ehr import EHRValidationError

    logic = DuPLUSPrognosis.DuPLUSPrognosisLogic()
    stages: list[str] = []
    try:
        logic.predictAsync({"age": 70, "stage": "IV", "site": "larynx"}, server=server.url, apiKey=server.key,
                           onProgress=lambda stage, fraction, message: stages.append(stage))
        remote = logic.wait(timeout_s=RUN_TIMEOUT_S)
        local = logic.predict({"age": 70, "stage": "IV", "site": "larynx"})
        volume = mrml.volume_node_from_image(VolumeImage(np.zeros((8, 8, 8), np.int16), spacing=(1.0, 1.0, 1.0)), "CT", mrml_scene)
        with pytest.raises(EHRValidationError, match="health record only"):
            logic.predictAsync({"age": 70}, volume, None, server=server.url, apiKey=server.key)
        assert not logic.isBusy
    finally:
        logic.shutdown()
    assert "predicting" in stages and remote["server"] == server.url
    assert remote["readout"]["risk_score"] == pytest.approx(local["readout"]["risk_score"], abs=1e-9)
    assert remote["readout"]["survival"] == local["readout"]["survival"]
    table, _ = logic.showReadout(remote, mrml_scene)
    assert table.GetNumberOfRows() == logic.showReadout(local, mrml_scene)[0].GetNumberOfRows() > 0


# The start of a script run in a subprocess where these packages cannot be imported; ``tries``
# lists what asked for them, to prove the blocker was in the way.
HIDE_IMPORTS = r'''
import importlib.abc, json, sys
HIDDEN = {"torch", "monai", "transformers", "fastapi", "uvicorn", "starlette"}
tries = []

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            tries.append(name)
            raise ImportError(f"{name} is hidden for this test")
        return None

sys.meta_path.insert(0, Hide())
for name in list(sys.modules):
    if name.split(".")[0] in HIDDEN:
        del sys.modules[name]
try:
    import torch  # noqa: F401  proves the blocker works
except ImportError:
    pass
'''


def test_prognosis_predict_on_the_server_from_the_command_line_needs_no_torch(server, tmp_path, capsys):
    """``duplus prognosis predict --server`` in a subprocess where torch cannot be imported: the same
    readout as a local prediction, the report and the Kaplan-Meier PNG written here."""
    from DuPLUSLib.prognosis.bundle import load_prognosis_bundle
    from DuPLUSLib.prognosis.pipeline import predict_patient

    patient = {"age": 63, "stage": "III"}
    (tmp_path / "patient.json").write_text(json.dumps(patient), encoding="utf-8")
    runner = tmp_path / "no_torch_cli.py"
    runner.write_text(NO_TORCH_CLI, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(runner), "prognosis", "predict", "--ehr", str(tmp_path / "patient.json"),
         "--report", str(tmp_path / "report.json"), "--plot", str(tmp_path / "km.png"), "--progress", "json",
         "--server", server.url, "--api-key-file", str(server.folder / "key.txt")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=worker_environment(threads=1))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert json.loads(lines[-1])["blocked_tries"], "the import blocker was never asked: the test proves nothing"
    assert json.loads(lines[-1])["loaded"] == []
    remote = json.loads(lines[-2])["readout"]
    local = predict_patient(load_prognosis_bundle(None), dict(patient))
    assert remote["risk_group"] == local.risk_group and remote["risk_score"] == pytest.approx(local.risk_score, abs=1e-9)
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["readout"]["risk_score"] == remote["risk_score"] and report["reference"]["curves"]
    assert (tmp_path / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from DuPLUSLib.cli import main

    assert main(["prognosis", "predict", "--ehr", str(tmp_path / "patient.json"), "--image", "ct.nrrd",
                 "--segmentation", "gtv.seg.nrrd", "--server", server.url]) == 2
    assert "--image, --segmentation cannot be used with --server" in capsys.readouterr().err


NO_TORCH_CLI = HIDE_IMPORTS + r'''
from DuPLUSLib.cli import main

code = main(sys.argv[1:])
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN), "blocked_tries": tries}))
sys.exit(code)
'''


@pytest.mark.parametrize("argv, code, expected", [
    (["serve", "--port", "0"], 2, "install the server extra: pip install -e '.[server]'"),
    (["--help"], 0, "finetune"),
    (["segmnet"], 2, "invalid choice: 'segmnet'"),
])
def test_a_client_install_without_torch_or_the_server_extra_answers_cleanly(tmp_path, argv, code, expected):
    """A client install has neither torch nor FastAPI/uvicorn: ``duplus --help`` still lists every command
    (their modules import torch only when run), and ``duplus serve`` names the extra it needs."""
    runner = tmp_path / "no_torch_cli.py"
    runner.write_text(NO_TORCH_CLI, encoding="utf-8")
    result = subprocess.run([sys.executable, str(runner), *argv], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S, env=worker_environment(threads=1))
    assert result.returncode == code, result.stderr[-3000:]
    assert expected in result.stdout + result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------ Slicer without torch
def test_the_remote_client_path_runs_in_slicer_without_torch(server, tmp_path):
    """A subprocess where torch, MONAI, transformers, FastAPI and uvicorn cannot be imported runs the
    Segment module's Logic against the server, on a real slicer-core scene."""
    pytest.importorskip("slicer")
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH_SCRIPT, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), server.url, server.key, str(REPOSITORY / "DuPLUSSegment")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=worker_environment(threads=1))
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["blocked_tries"], "the import blocker was never asked: the test proves nothing"
    assert answer["loaded"] == [] and answer["segments"] == ["liver"]


NO_TORCH_SCRIPT = HIDE_IMPORTS + r'''
url, key, module_folder = sys.argv[1:4]
sys.path.insert(0, module_folder)

import numpy as np
import slicer

scene = slicer.vtkMRMLScene()
application = slicer.vtkSlicerApplicationLogic()
application.SetMRMLScene(scene)
colors = application.GetColorLogic()
colors.SetMRMLScene(scene)
colors.AddDefaultColorNodes()
logics = {"Colors": colors, "Volumes": slicer.vtkSlicerVolumesLogic(),
          "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic()}
for name, logic in logics.items():
    logic.SetMRMLScene(scene)
    logic.SetMRMLApplicationLogic(application)
    application.SetModuleLogic(name, logic)
slicer.mrmlScene = scene

import DuPLUSSegment
from DuPLUSLib import mrml
from DuPLUSLib.imageio import VolumeImage

k, j, i = np.meshgrid(np.arange(12), np.arange(18), np.arange(20), indexing="ij")
inside = (i - 10) ** 2 + (j - 9) ** 2 + ((k - 6) * 1.0) ** 2 < 25
array = np.where(inside, 300, -100).astype(np.int16)
volume = mrml.volume_node_from_image(VolumeImage(array, spacing=(4.0, 4.0, 4.0)), "phantom")
logic = DuPLUSSegment.DuPLUSSegmentLogic()
print("server:", logic.testConnection(url, key), file=sys.stderr)
node = logic.segment(volume, ["CT/abdomen/liver"], server=url, apiKey=key, timeout=240)
print(json.dumps({"segments": [s.name for s in mrml.imported_segments(node)],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN),
                  "blocked_tries": tries}))
'''


# ------------------------------------------------------------------------------------ a server that dies
@pytest.mark.slow
def test_a_server_killed_mid_job_gives_the_logic_a_clear_error_and_leaves_the_scene(tmp_path, mrml_scene):
    pytest.importorskip("slicer")
    import DuPLUSSegment
    from DuPLUSLib import mrml
    from DuPLUSLib.server.jobs import _remove_abandoned_roots

    running = RunningServer(tmp_path)
    volume = mrml.volume_node_from_image(read_image(SAMPLE), "sample")
    before = scene_snapshot(mrml_scene)
    logic = DuPLUSSegment.DuPLUSSegmentLogic()
    logic.remoteLostAfterSeconds = 2.0
    stages: list[str] = []
    errors: list[BaseException] = []
    try:
        logic.segmentAsync(volume, ["CT/abdomen/*"], server=running.url, apiKey=running.key,
                           onProgress=lambda stage, fraction, message: stages.append(stage), onError=errors.append)
        folder = logic._workFolder
        wait_for(lambda: logic.poll() and "inference" in stages)
        os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait(timeout=30)
        logic.wait(timeout=60)
    finally:
        logic.shutdown()
        running.stop()
    assert len(errors) == 1 and isinstance(errors[0], ServerError)
    assert "stopped answering" in str(errors[0]) and "nothing was imported" in str(errors[0])
    assert scene_snapshot(mrml_scene) == before and not logic.isBusy and not Path(folder).exists()
    leftovers = list(running.work_dir.glob("duplus-serve-*"))
    assert leftovers, "a killed server cannot clean up; the next one does"
    _remove_abandoned_roots(running.work_dir)  # what the next server does when it starts there
    assert not list(running.work_dir.glob("duplus-serve-*"))


# ------------------------------------------------------------------------------------ logs
def test_the_log_holds_no_key_and_no_image_data(server):
    """Run last in this module: every request of the tests above is in this log."""
    log = server.log()
    assert "POST /v1/jobs" in log and "GET /v1/info" in log
    assert server.key not in log and server.key[:12] not in log
    assert MARKER.decode() not in log
    assert not re.search(r"[^\x09\x0a\x0d\x20-\x7e]", log), "binary data in the log"


def scene_snapshot(scene) -> list[tuple[str, str]]:
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return sorted((node.GetClassName(), node.GetName() or "") for node in nodes)
