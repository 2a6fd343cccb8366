"""The server's job queue: uploads on disk, one job at a time through the warm worker.

Each job lives in its own folder under the server's work folder (a fresh ``duplus-serve-*``
folder per server start, readable by the server's user only). The folder is removed as soon as the
job fails or is cancelled; when the job is done only the input scan is removed at once, and the
result stays until the client removes it (``DELETE``) or ``keep_results_s`` passes, at the latest
when the job is forgotten (``forget_after_s``, never before ``keep_results_s``). Folders left by
a server that was killed are removed when the next server starts in the same work folder.

One thread runs the jobs in submission order on one :class:`~DuPLUSLib.worker.Worker`, which
keeps the model loaded; its events are stored per job, as the worker emits them, for the clients
to poll. Jobs waiting in the queue get a ``queued`` progress event whenever their place changes.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import InputImageError, ResourceLimitError
from .protocol import API_PREFIX, NIFTI_FORMATS, RESULT_FORMATS, JobNotFoundError, JobStateError, QueueFullError

__all__ = ["Job", "JobQueue", "JobState"]

log = logging.getLogger("duplus.serve")

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_HEADER_BYTES = 2**20  # of an upload read to find where its data is; NRRD and MHA headers take a few KiB
_META_FIELD = re.compile(r"\s*(?P<key>[^=:]*?)\s*[=:]\s*(?P<value>.*?)\s*$")  # MetaImage: 'Key = value' or 'Key: value'
_DETACHED_DATA = ("the uploaded file does not hold its image data: {what} names another file for it, and this "
                  "server reads nothing but the upload. Save the volume as a single .nrrd/.nii.gz/.mha file with "
                  "its data inside, and send that")
_ROOT_PREFIX = "duplus-serve-"
_PID_FILE = "server.pid"


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    """One request: its files, its state and every event the worker emitted for it."""

    id: str
    folder: Path
    input_path: Path
    prompts: list[str]
    modality: str | None = None
    state: JobState = JobState.QUEUED
    events: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    upload_bytes: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    files_removed: bool = False

    @property
    def result_path(self) -> Path:
        return self.folder / RESULT_FORMATS["seg.nrrd"][0]

    @property
    def report_path(self) -> Path:
        return self.folder / "report.json"


class JobQueue:
    """Jobs in, events out; one job runs at a time, on the device the server was started with."""

    def __init__(
        self,
        work_dir: str | os.PathLike[str] | None,
        model: str | None,
        device: str,
        keep_results_s: float = 1800.0,
        max_queue: int = 16,
        forget_after_s: float = 3600.0,
    ):
        self.model = model
        self.device = device
        self.keep_results_s = keep_results_s
        self.max_queue = max_queue
        self.forget_after_s = max(forget_after_s, keep_results_s)  # a job known to none has no files left either
        self.root = _make_root(work_dir)
        self.jobs_accepted = 0
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[str] = collections.deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._worker = None

    # ------------------------------------------------------------------------------ life
    def load_model(self):
        """Load the model now (before the server says it is ready); returns the segmenter."""
        from ..worker import Worker

        self._worker = Worker(self._emit, cancel=self._cancel_requested)
        segmenter, _, seconds = self._worker.segmenter_for(self.model, self.device)
        log.info("model '%s' loaded on %s in %.1f s", segmenter.bundle.config.name, segmenter.device, seconds)
        return segmenter

    @property
    def segmenter(self):
        return self._worker.segmenter_for(self.model, self.device)[0]

    def start(self) -> None:
        if self._worker is None:
            self.load_model()
        self._thread = threading.Thread(target=self._run_jobs, name="duplus-serve-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel every job, wait for the running one to stop, remove the work folder."""
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel_requested.set()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------------------ submitting
    def new_job(self, prompts: list[str], modality: str | None, suffix: str) -> Job:
        """A job with its folder, before the upload is stored there (not yet queued)."""
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(
                    f"the server's queue is full ({self.max_queue} jobs waiting); try again in a few minutes"
                )
        job_id = secrets.token_hex(16)
        folder = self.root / job_id
        folder.mkdir(mode=0o700)
        return Job(job_id, folder, folder / f"input{suffix}", list(prompts), modality)

    def discard(self, job: Job) -> None:
        """Forget a job whose upload failed; its folder goes."""
        shutil.rmtree(job.folder, ignore_errors=True)
        job.files_removed = True

    def enqueue(self, job: Job) -> int:
        """Queue an uploaded job; returns how many jobs are ahead of it."""
        with self._lock:
            if self._stopping:
                self.discard(job)
                raise QueueFullError("the server is shutting down; try again when it is back")
            self._jobs[job.id] = job
            self._waiting.append(job.id)
            self.jobs_accepted += 1
            position = self._position(job.id)
            job.events.append(_queued_event(job.id, position))
            self._lock.notify_all()
        log.info("job %s queued: %d prompt(s), %.1f MB, %d ahead", job.id[:8], len(job.prompts),
                 job.upload_bytes / 1e6, position)
        return position

    # ------------------------------------------------------------------------------ clients' view
    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id) if _JOB_ID.match(job_id or "") else None
        if job is None:
            raise JobNotFoundError(f"no job '{job_id}' on this server; it was never submitted or has been removed")
        return job

    def status(self, job_id: str, after: int = 0) -> dict[str, Any]:
        """State, place in the queue and the events from ``after`` on."""
        job = self.get(job_id)
        with self._lock:
            events = job.events[max(0, after):]
            return {
                "id": job.id,
                "state": job.state.value,
                "position": self._position(job.id) if job.state is JobState.QUEUED else 0,
                "events": events,
                "next": len(job.events),
            }

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job (its files go now) or a running one (it stops between windows and its
        files go then); for a finished job, remove its files. Returns the job's state."""
        job = self.get(job_id)
        with self._lock:
            if job.state is JobState.QUEUED:
                self._waiting.remove(job.id)
                self._end(job, JobState.CANCELLED, {"event": "error", "id": job.id, "error": "CancelledError",
                                                    "message": "segmentation cancelled"})
                self._announce_positions()
            elif job.state is JobState.RUNNING:
                job.cancel_requested.set()
                log.info("job %s: cancel requested", job.id[:8])
                return {"id": job.id, "state": "cancelling"}
            else:
                self._remove_files(job)
        return {"id": job.id, "state": job.state.value}

    def result_file(self, job_id: str, fmt: str) -> Path:
        job = self.get(job_id)
        if job.state is not JobState.DONE:
            raise JobStateError(f"job '{job_id}' is {job.state.value}; a result exists only once it is done")
        path = job.folder / RESULT_FORMATS[fmt][0]
        if fmt in NIFTI_FORMATS and not job.files_removed and not path.is_file() and job.result_path.is_file():
            _write_nifti(job)
        if job.files_removed or not path.is_file():
            raise JobNotFoundError(
                f"the result of job '{job_id}' has been removed (downloaded and deleted, or kept longer than "
                f"{self.keep_results_s / 60:.0f} min); submit the volume again"
            )
        return path

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"waiting": len(self._waiting), "running": int(self._running is not None),
                    "accepted": self.jobs_accepted}

    def _position(self, job_id: str) -> int:
        """Jobs ahead of this one: those before it in the queue, and the running one."""
        return self._waiting.index(job_id) + (1 if self._running is not None else 0)

    def _announce_positions(self) -> None:
        for job_id in self._waiting:
            self._jobs[job_id].events.append(_queued_event(job_id, self._position(job_id)))

    # ------------------------------------------------------------------------------ the runner
    def _run_jobs(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._lock.wait(timeout=5.0)
                    self._sweep()
                if self._stopping:
                    return
                job = self._jobs[self._waiting.popleft()]
                self._running = job
                job.state, job.started = JobState.RUNNING, time.time()
                self._announce_positions()
            self._run_one(job)
            with self._lock:
                self._running = None
                self._announce_positions()
                self._sweep()

    def _run_one(self, job: Job) -> None:
        log.info("job %s started", job.id[:8])
        request = {
            "id": job.id,
            "input": str(job.input_path),
            "prompts": job.prompts,
            "modality": job.modality,
            "output": str(job.result_path),
            "report": str(job.report_path),
            "model": self.model,
            "device": self.device,
            "overwrite": True,
        }
        self._worker.handle_request(request)
        with self._lock:
            last = job.events[-1] if job.events else {}
            if last.get("event") == "done":
                state = JobState.DONE
            elif job.cancel_requested.is_set() or last.get("error") == "CancelledError":
                state = JobState.CANCELLED
            else:
                state = JobState.FAILED
            self._end(job, state)
        log.info("job %s %s after %.1f s%s", job.id[:8], state.value, job.finished - job.started,
                 f" ({last.get('error')})" if state is JobState.FAILED else "")

    def _end(self, job: Job, state: JobState, event: dict | None = None) -> None:
        """Record the end of a job and remove what it no longer needs (call with the lock held)."""
        if event is not None:
            job.events.append(event)
        job.state, job.finished = state, time.time()
        if state is JobState.DONE:
            job.input_path.unlink(missing_ok=True)  # the scan goes at once; the result waits for its client
        else:
            self._remove_files(job)

    def _remove_files(self, job: Job) -> None:
        shutil.rmtree(job.folder, ignore_errors=True)
        job.files_removed = True

    def _sweep(self) -> None:
        """Remove results kept too long, and forget old finished jobs (call with the lock held)."""
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if not job.state.finished or job.finished is None:
                continue
            if not job.files_removed and now - job.finished > self.keep_results_s:
                self._remove_files(job)
                log.info("job %s: result removed after %.0f min unclaimed", job_id[:8], self.keep_results_s / 60)
            if now - job.finished > self.forget_after_s:
                if not job.files_removed:  # no folder may outlive the job that names it (404 to every client)
                    self._remove_files(job)
                del self._jobs[job_id]

    # ------------------------------------------------------------------------------ worker hooks
    def _emit(self, event: dict[str, Any]) -> None:
        """The worker's events, stored for the job's client, with server paths taken out."""
        job = self._running
        if job is None:
            return
        if event.get("event") == "done":
            event = _public_done_event(event, job.id)
        with self._lock:
            job.events.append(event)

    def _cancel_requested(self) -> bool:
        job = self._running
        return job is not None and (job.cancel_requested.is_set() or self._stopping)


def _write_nifti(job: Job) -> None:
    """The job's multi-label NIfTI and label table, from its ``.seg.nrrd``, with the run's confidences."""
    from ..formats import convert_segmentation
    from ..ontology import load_ontology

    done = next((event for event in reversed(job.events) if event.get("event") == "done"), {})
    confidences = {entry.get("structure"): entry.get("confidence") for entry in done.get("segments") or []}
    prompts = load_ontology().parse_many(job.prompts, job.modality)
    convert_segmentation(job.result_path, prompts, job.folder / RESULT_FORMATS["nii.gz"][0], "nifti",
                         confidences=confidences)


def _queued_event(job_id: str, position: int) -> dict[str, Any]:
    message = "next in line" if position == 0 else f"waiting: {position} job{'s' if position > 1 else ''} ahead"
    return {"event": "progress", "id": job_id, "stage": "queued", "fraction": 0.0, "message": message,
            "position": position}


def _public_done_event(event: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The worker's ``done`` event with download addresses where it names files on the server."""
    public = dict(event)
    public["output"] = f"{API_PREFIX}/jobs/{job_id}/result"
    public["report"] = f"{API_PREFIX}/jobs/{job_id}/report"
    public["preview"] = None
    model = event.get("model")
    if isinstance(model, dict):
        public["model"] = {"name": model.get("name")}
    return public


def public_report(report: dict[str, Any]) -> dict[str, Any]:
    """A job's report without the server's file paths (the client fills in its own)."""
    public = dict(report)
    if isinstance(public.get("input"), dict):
        public["input"] = {**public["input"], "path": None}
    public["output"] = None
    if isinstance(public.get("model"), dict):
        public["model"] = {**public["model"], "path": None}
    for key in ("preview", "report", "probabilities"):
        public.pop(key, None)
    return public


# ------------------------------------------------------------------------------ the work folder
def _make_root(work_dir: str | os.PathLike[str] | None) -> Path:
    """A fresh folder for this server's jobs, after removing those of servers that are gone."""
    parent = Path(work_dir) if work_dir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_roots(parent)
    root = Path(tempfile.mkdtemp(prefix=_ROOT_PREFIX, dir=parent))
    os.chmod(root, 0o700)
    (root / _PID_FILE).write_text(str(os.getpid()), encoding="utf-8")
    return root


def _remove_abandoned_roots(parent: Path) -> None:
    """Remove job folders left by a server that was killed (its pid no longer runs)."""
    import psutil

    for candidate in parent.glob(f"{_ROOT_PREFIX}*"):
        pid_file = candidate / _PID_FILE
        try:
            pid = int(pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            continue  # not ours, or being created right now: leave it
        if pid != os.getpid() and not psutil.pid_exists(pid):
            shutil.rmtree(candidate, ignore_errors=True)
            log.info("removed the job folder of a server that stopped without cleaning up (pid %d)", pid)


def check_upload(path: Path, fmt: str, max_voxels: int) -> tuple[int, int, int]:
    """Read only the uploaded file's header: a 3D scalar volume of at most ``max_voxels``, that fits
    in memory, whose data is inside the upload. Returns its size (i, j, k). Refuses with a message
    naming the problem."""
    import SimpleITK as sitk

    from ..imageio import _refuse_if_too_large

    _refuse_detached_data(path, fmt)  # before SimpleITK, which would open the file a header names
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1][:200] if str(error).strip() else "unreadable header"
        raise InputImageError(
            f"the uploaded file cannot be read as a {fmt} image ({detail}); the upload is corrupt or not "
            "that format: send the volume again as NRRD, NIfTI or MHA"
        ) from None
    size = tuple(int(n) for n in reader.GetSize())
    if len(size) != 3 or min(size) < 2:
        raise InputImageError(f"the uploaded image is {'x'.join(map(str, size))}; a 3D volume is needed")
    if reader.GetNumberOfComponents() != 1:
        raise InputImageError(
            f"the uploaded image has {reader.GetNumberOfComponents()} components per voxel; a scalar "
            "(grey-level) volume is needed"
        )
    voxels = size[0] * size[1] * size[2]
    if voxels > max_voxels:
        raise ResourceLimitError(
            f"the uploaded volume has {'x'.join(map(str, size))} = {voxels / 1e6:.0f} M voxels; this server takes "
            f"at most {max_voxels / 1e6:.0f} M (duplus serve --max-voxels); crop or downsample it first"
        )
    _refuse_if_too_large(path)
    return size  # type: ignore[return-value]


def _refuse_detached_data(path: Path, fmt: str) -> None:
    """Refuse an upload whose header names another file for its image data.

    A NRRD ``data file:`` field (``datafile:``, as in an ``.nhdr``) or a MetaImage
    ``ElementDataFile`` other than ``LOCAL`` (as in an ``.mhd``) makes the reader open that path on
    the server: any file the server's user can read, or ``/dev/zero``. Only the upload's header is
    read, line by line up to the line that ends it and at most ``_MAX_HEADER_BYTES``; a header
    longer than that is refused, as what lies beyond it cannot be checked. NIfTI (``.nii``,
    ``.nii.gz``) always holds its data after its header.
    """
    if fmt not in ("nrrd", "mha"):
        return
    budget = _MAX_HEADER_BYTES
    with open(path, "rb") as handle:
        while budget > 0:
            raw = handle.readline(budget)
            if not raw:
                return  # the end of the file, and no other file named: SimpleITK says what else is wrong
            if fmt == "nrrd" and budget == _MAX_HEADER_BYTES and not raw.startswith(b"NRRD"):
                return  # not a NRRD at all: SimpleITK refuses it as corrupt
            budget -= len(raw)
            line = raw.rstrip(b"\r\n").decode("latin-1")
            if fmt == "nrrd":
                if not line:
                    return  # the blank line ends the header; the data follows it, in the upload
                field = line.split(":", 1)[0]
                if ":" in line and not line.startswith("#") and field.replace(" ", "").lower() == "datafile":
                    raise InputImageError(_DETACHED_DATA.format(
                        what="its NRRD header's 'data file' field (a detached header, as in an .nhdr)"))
            else:
                field = _META_FIELD.match(line)
                if field and field["key"].lower() == "elementdatafile":  # the last header field; the data follows it
                    if field["value"].upper() == "LOCAL":
                        return
                    raise InputImageError(_DETACHED_DATA.format(
                        what="its MetaImage header's ElementDataFile (not LOCAL, as in an .mhd)"))
    raise InputImageError(
        f"the uploaded file's {fmt} header does not end within its first {_MAX_HEADER_BYTES // 2**20} MiB; the "
        "upload is corrupt or not that format: send the volume again as NRRD, NIfTI or MHA"
    )
