"""The client of ``duplus serve``: segment on a remote GPU server. Standard library only.

Slicer on a laptop needs no PyTorch, MONAI or transformers for this path: this module imports only
the standard library and the library's own torch-free modules (errors, the worker protocol's error
mapping), so it works in any Slicer and is checked to import with torch hidden.

Three layers, each usable alone:

* :class:`ServerClient` - one method per endpoint (health, info, ontology, submit, status, cancel,
  result, report, prognosis); HTTP errors become the library's exceptions, with the server's message;
* :func:`run_job` - upload, poll, download, clean up: what ``duplus segment --server`` does, with the
  same progress callback and cancel poll as the local engine;
* :class:`RemoteRunner` - :func:`run_job` on a background thread behind the interface of the local
  :class:`~DuPLUSLib.segment_process.BackgroundRunner` (the Segment logic's ``JobRunner``: submit,
  poll, cancel, wait), so the logic drives a remote run exactly like a local one: same progress
  stages, same callbacks, same errors, same import.

    client = ServerClient("https://gpu.example.org:8000", api_key=open("key.txt").read().strip())
    print(describe_server(client.check()))
    run_job(client, "ct.nrrd", ["CT/abdomen/liver"], "ct.seg.nrrd", report="ct.json")
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import queue
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .errors import CancelledError, DuPLUSError, InputImageError, OutputPathError, ResourceLimitError
from .segment_process import RunCallbacks, RunDelivery, RunnerState, error_from_event
from .server.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    SERVER_PROTOCOL,
    UPLOAD_FORMATS,
    VERSION_HEADER,
    AuthenticationError,
    JobNotFoundError,
    JobStateError,
    ProtocolMismatchError,
    QueueFullError,
    ServerError,
)

__all__ = [
    "AuthenticationError",
    "ProtocolMismatchError",
    "RemoteRunner",
    "ServerClient",
    "ServerError",
    "ServerUnreachableError",
    "client_from_options",
    "describe_server",
    "predict_prognosis_remote",
    "read_api_key_file",
    "run_job",
    "upload_format",
]

log = logging.getLogger("duplus.remote")

ProgressCallback = Callable[[str, float, str], None]
CancelCallback = Callable[[], bool]

_ = (JobNotFoundError, JobStateError, QueueFullError)  # error classes the server may name


# What a dropped, refused or stalled connection raises, opening a request or reading its answer.
_CONNECTION_ERRORS = (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


class ServerUnreachableError(ServerError):
    """No answer at all: wrong address, server down, network or firewall in the way."""


# ------------------------------------------------------------------------------------ the client
class ServerClient:
    """One DuPLUS server: its address, the API key, and a method per endpoint.

    ``protocol`` is the protocol version this client announces (tests use an older one to check
    that a mismatch is refused with both versions named). ``cafile`` trusts a hospital's own
    certificate authority for https (``SSL_CERT_FILE`` in the environment works too).
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 30.0,
                 protocol: int = SERVER_PROTOCOL, cafile: str | None = None):
        self.url = normalise_server_url(url)
        self.timeout_s = timeout_s
        self.protocol = protocol
        self._api_key = (api_key or "").strip() or None
        self._ssl = ssl.create_default_context(cafile=cafile) if self.url.startswith("https:") else None
        host = urllib.parse.urlsplit(self.url).hostname or ""
        if self._api_key and self.url.startswith("http:") and host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("sending the API key to %s over plain http; use https on a shared network", host)

    def __repr__(self) -> str:  # never shows the key
        return f"ServerClient({self.url!r}, api_key={'set' if self._api_key else 'none'})"

    # ---------------------------------------------------------------------------- endpoints
    def health(self) -> dict:
        """The server's name, version and protocol (no key needed); refuses a non-DuPLUS answer or
        another protocol version, naming both."""
        answer = self._json("GET", "/health")
        if not isinstance(answer, dict) or answer.get("service") != "duplus":
            raise ServerError(f"{self.url} answered, but not as a DuPLUS server; check the address "
                              "(it is what 'duplus serve' prints, e.g. http://gpu-host:8000)")
        if answer.get("protocol") != self.protocol:
            raise ProtocolMismatchError(
                f"the server at {self.url} speaks DuPLUS server protocol {answer.get('protocol')} (DuPLUS "
                f"{answer.get('version')}) but this client speaks protocol {self.protocol} (DuPLUS {__version__}); "
                "install the same DuPLUS version on both sides"
            )
        return answer

    def info(self) -> dict:
        """Model, device, queue and limits (needs the key)."""
        return self._json("GET", "/info")

    def check(self) -> dict:
        """What "Test connection" does: the protocol, then the key; returns :meth:`info`."""
        self.health()
        return self.info()

    def ontology(self) -> dict:
        return self._json("GET", "/ontology")

    def submit(self, path: str | os.PathLike[str], prompts: Sequence[str], modality: str | None = None,
               progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> dict:
        """Upload a volume file with its prompts; returns ``{"id", "state", "position"}``."""
        path = Path(path)
        fmt = upload_format(path)
        size = path.stat().st_size
        query = [("prompt", p) for p in prompts] + [("format", fmt)] + ([("modality", modality)] if modality else [])
        with open(path, "rb") as stream:
            body = _UploadStream(stream, size, progress, cancel)
            return self._json("POST", "/jobs?" + urllib.parse.urlencode(query), body=body,
                              headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    def status(self, job_id: str, after: int = 0) -> dict:
        return self._json("GET", f"/jobs/{_quote(job_id)}?after={int(after)}")

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job; for a finished one, remove its files from the server."""
        return self._json("DELETE", f"/jobs/{_quote(job_id)}")

    def download_result(self, job_id: str, path: str | os.PathLike[str], fmt: str = "seg.nrrd") -> Path:
        """Download the result into ``path``, written under a temporary name and renamed when complete."""
        path = Path(path)
        query = urllib.parse.urlencode({"format": fmt})
        with self._open("GET", f"/jobs/{_quote(job_id)}/result?{query}") as response:
            with _atomic_file(path) as stream:
                while True:
                    block = self._read(response, 1 << 20)
                    if not block:
                        break
                    stream.write(block)
                if response.length:  # http.client ends a sized read quietly when the connection drops
                    raise self._unreachable(f"the connection closed {response.length} bytes before the end of "
                                            "the result")
        return path

    def report(self, job_id: str) -> dict:
        return self._json("GET", f"/jobs/{_quote(job_id)}/report")

    def predict_prognosis(self, ehr: dict[str, Any], plot: bool = False) -> dict:
        """The prognosis readout for one patient's EHR (``plot_png``: the Kaplan-Meier plot, base64)."""
        body = json.dumps({"ehr": ehr, "plot": plot}).encode("utf-8")
        return self._json("POST", "/prognosis", body=body, headers={"Content-Type": "application/json"})

    # ---------------------------------------------------------------------------- HTTP
    def _json(self, method: str, route: str, body=None, headers: dict | None = None) -> Any:
        with self._open(method, route, body, headers) as response:
            data = self._read(response)
        try:
            return json.loads(data)
        except ValueError:
            raise ServerError(f"{self.url} sent an answer that is not JSON for {route.split('?')[0]}; "
                              "is this the address of a DuPLUS server?") from None

    def _open(self, method: str, route: str, body=None, headers: dict | None = None):
        request = urllib.request.Request(self.url + API_PREFIX + route, data=body, method=method)
        request.add_header(PROTOCOL_HEADER, str(self.protocol))
        request.add_header(VERSION_HEADER, __version__)
        request.add_header("Accept", "application/json")
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s, context=self._ssl)
        except urllib.error.HTTPError as error:
            raise self._error_from_answer(error, route) from None
        except urllib.error.URLError as error:
            raise self._unreachable(error.reason) from None
        except _CONNECTION_ERRORS as error:
            raise self._unreachable(error) from None

    def _read(self, response, size: int | None = None) -> bytes:
        """The answer's body (all of it, or up to ``size`` bytes); a stall or a dropped connection
        while it arrives is the same ``ServerUnreachableError`` as one before it (the runner then
        waits and retries). ``read()`` with no size checks the Content-Length; ``read(-1)`` does not."""
        try:
            return response.read() if size is None else response.read(size)
        except _CONNECTION_ERRORS as error:
            raise self._unreachable(error) from None

    def _error_from_answer(self, error: urllib.error.HTTPError, route: str) -> DuPLUSError:
        try:
            payload = json.loads(error.read() or b"null")
        except (ValueError, OSError):
            payload = None
        if isinstance(payload, dict) and payload.get("error") and payload.get("message"):
            return error_from_event(payload)
        if error.code == 401:
            return AuthenticationError(f"{self.url} refused the request (HTTP 401); check the API key")
        return ServerError(
            f"{self.url} answered HTTP {error.code} ({error.reason}) for {API_PREFIX}{route.split('?')[0]} without "
            "a DuPLUS message; check the address (it is what 'duplus serve' prints, e.g. http://gpu-host:8000)"
        )

    def _unreachable(self, reason: Any) -> ServerUnreachableError:
        if isinstance(reason, socket.gaierror):
            why = f"the host name '{urllib.parse.urlsplit(self.url).hostname}' is unknown"
        elif isinstance(reason, ConnectionRefusedError):
            why = "connection refused: nothing listens on that port"
        elif isinstance(reason, (socket.timeout, TimeoutError)):
            why = f"no answer within {self.timeout_s:.0f} s"
        elif isinstance(reason, ssl.SSLError):
            why = f"the TLS connection failed ({reason}); for a hospital's own certificate authority set SSL_CERT_FILE"
        else:
            why = str(reason) or type(reason).__name__
        return ServerUnreachableError(
            f"cannot reach the DuPLUS server at {self.url}: {why}; check the address and that 'duplus serve' "
            "is running there"
        )


def normalise_server_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing slash; anything else is refused."""
    text = (url or "").strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(
            f"server address '{text}' is not an http:// or https:// address; write it as http://HOST:PORT, "
            "e.g. http://gpu-host:8000"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ServerError(f"server address '{parts.scheme}://{parts.hostname}...' may hold no user name, password, "
                          "query or fragment; give the API key separately")
    try:
        parts.port  # noqa: B018  raises for a port that is not a number
    except ValueError:
        raise ServerError(f"server address '{text}' has an invalid port") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """The key in a key file (one line); a clear error when it is missing or empty."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AuthenticationError(f"API key file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise AuthenticationError(f"cannot read the API key file '{path}': {error}") from None
    if not key:
        raise AuthenticationError(f"API key file '{path}' is empty")
    return key


def client_from_options(url: str, api_key_file: str | os.PathLike[str] | None = None) -> "ServerClient":
    """The client a command line asks for: ``--server URL`` with ``--api-key-file F`` or ``DUPLUS_API_KEY``."""
    key = read_api_key_file(api_key_file) if api_key_file else os.environ.get("DUPLUS_API_KEY")
    return ServerClient(url, api_key=key)


def describe_server(info: dict) -> str:
    """One line for "Test connection": version, model, device, queue."""
    model = info.get("model") or {}
    queue_info = info.get("queue") or {}
    waiting = int(queue_info.get("waiting", 0)) + int(queue_info.get("running", 0))
    return (f"DuPLUS {info.get('version')}: model '{model.get('name')}' on {info.get('device')}; "
            f"{waiting} job(s) running or waiting")


def upload_format(path: str | os.PathLike[str]) -> str:
    """The server's name for this file's format, from its ending; other endings are refused."""
    name = Path(path).name.lower()
    for fmt, suffix in sorted(UPLOAD_FORMATS.items(), key=lambda item: -len(item[1])):
        if name.endswith(suffix):
            return fmt
    raise InputImageError(
        f"'{path}' cannot be sent as it is: the server takes {', '.join(sorted(set(UPLOAD_FORMATS.values())))} "
        "files; convert it first (duplus segment converts DICOM folders, .nhdr and .mhd itself)"
    )


# ------------------------------------------------------------------------------------ one job
def run_job(
    client: ServerClient,
    input_path: str | os.PathLike[str],
    prompts: Sequence[str],
    output: str | os.PathLike[str],
    report: str | os.PathLike[str] | None = None,
    modality: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    poll_interval_s: float = 0.25,
    lost_after_s: float = 15.0,
    on_submitted: Callable[[str], None] | None = None,
    reported_input: str | os.PathLike[str] | None = None,
    reported_output: str | os.PathLike[str] | None = None,
) -> dict:
    """Segment ``input_path`` on the server: upload, wait, download the ``.seg.nrrd`` (and report).

    Returns the worker's ``done`` event with ``output`` and ``report`` naming the local files. The
    progress callback gets the worker's own stages plus ``uploading``, ``queued`` (with the place
    in the queue) and ``downloading``. ``cancel`` is polled throughout; when it answers True the job
    is cancelled on the server and :class:`CancelledError` raised. The job's files are removed from
    the server once the result is here, or on any failure. A server that stops answering for
    ``lost_after_s`` is an error, and nothing is written. The report names ``reported_input``
    (default ``input_path``) as its input: the user's file when a converted copy was sent; and
    ``reported_output`` (default ``output``) as its output: the user's file when the download is
    converted to another format.
    """
    progress = progress or (lambda stage, fraction, message: None)
    cancel = cancel or (lambda: False)
    info = client.check()
    size = Path(input_path).stat().st_size
    limit = (info.get("limits") or {}).get("max_upload_bytes")
    if limit and size > limit:
        raise ResourceLimitError(
            f"'{Path(input_path).name}' is {size / 2**20:.1f} MiB but the server takes at most {limit / 2**20:.1f} MiB "
            "(duplus serve --max-upload-mb); crop or downsample the volume, or ask the server's administrator to "
            "raise the limit"
        )
    progress("uploading", 0.0, f"sending {Path(input_path).name} ({size / 2**20:.1f} MiB)")
    job = client.submit(input_path, prompts, modality, progress, cancel)
    job_id = job["id"]
    if on_submitted:
        on_submitted(job_id)
    finished = False
    try:
        done = _follow(client, job_id, progress, cancel, poll_interval_s, lost_after_s)
        progress("downloading", 0.0, "receiving the segmentation")
        client.download_result(job_id, output)
        if report is not None:
            _write_report(client.report(job_id), reported_input or input_path, reported_output or output, report)
        progress("downloading", 1.0, "received")
        finished = True
    finally:
        _forget_job(client, job_id, quietly=not finished)
    return {**done, "output": str(Path(output)), "report": str(Path(report)) if report is not None else None}


def _follow(client: ServerClient, job_id: str, progress: ProgressCallback, cancel: CancelCallback,
            poll_interval_s: float, lost_after_s: float) -> dict:
    """Poll the job's events until ``done``; relay progress; raise its error or a lost server."""
    after, last_answer = 0, time.monotonic()
    while True:
        if cancel():
            raise CancelledError("segmentation cancelled")
        try:
            status = client.status(job_id, after)
        except ServerUnreachableError as error:
            if time.monotonic() - last_answer > lost_after_s:
                raise ServerError(
                    f"the DuPLUS server at {client.url} stopped answering during the run ({str(error).split(': ', 1)[-1]}); "
                    "nothing was imported. Check that the server is running, then run again"
                ) from None
            time.sleep(poll_interval_s)
            continue
        last_answer = time.monotonic()
        for event in status.get("events", []):
            kind = event.get("event")
            if kind == "progress":
                progress(str(event.get("stage", "")), float(event.get("fraction", 0.0)), str(event.get("message", "")))
            elif kind == "done":
                return event
            elif kind == "error":
                if event.get("error") == "CancelledError":
                    raise CancelledError("the job was cancelled on the server")
                raise error_from_event(event)
        after = int(status.get("next", after))
        if status.get("state") in ("done", "failed", "cancelled"):
            raise ServerError(f"job {job_id} ended ({status.get('state')}) without a result or an error message")
        time.sleep(poll_interval_s)


def _forget_job(client: ServerClient, job_id: str, quietly: bool) -> None:
    """Cancel or clean up the job on the server (its files go); failures only matter when asked."""
    try:
        client.cancel(job_id)
    except DuPLUSError:
        if not quietly:
            log.warning("could not remove job %s from %s; the server removes it later itself", job_id[:8], client.url)


def _write_report(report: dict, input_path, output, path) -> None:
    report = dict(report)
    if isinstance(report.get("input"), dict):
        report["input"] = {**report["input"], "path": str(Path(input_path).resolve())}
    report["output"] = str(Path(output).resolve())
    with _atomic_file(Path(path)) as stream:
        stream.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))


def check_remote_prognosis_request(request: dict[str, Any]) -> None:
    """Refuse what a server cannot do for a prognosis request, before anything is sent."""
    if request.get("image") or request.get("segmentation"):
        from .prognosis.ehr import EHRValidationError

        raise EHRValidationError(
            "a DuPLUS server predicts from the health record only; for a model with image features, run the "
            "prediction on this computer (Where to run: this computer)")
    if request.get("model"):
        from .errors import ModelBundleError

        raise ModelBundleError("a prognosis model folder cannot be chosen for a remote run: the server uses the "
                               "model it was started with (duplus serve --prognosis-model); leave it empty")


def predict_prognosis_remote(client: ServerClient, request: dict[str, Any],
                             progress: ProgressCallback | None = None) -> dict:
    """A worker prognosis request (``ehr``, ``report``) answered by the server's prognosis model.

    Writes the report the local worker would write and returns the worker's ``done`` event. The
    server takes the health record only: a request with an image refuses with what to do instead.
    """
    progress = progress or (lambda stage, fraction, message: None)
    check_remote_prognosis_request(request)
    started = time.monotonic()
    progress("predicting", 0.0, f"asking the server at {client.url}")
    answer = client.predict_prognosis(request["ehr"], plot=False)
    progress("writing", 0.0, "writing the report")
    report = {key: value for key, value in answer.items() if key != "plot_png"} | {"server": client.url}
    with _atomic_file(Path(request["report"])) as stream:
        stream.write((json.dumps(report, indent=1) + "\n").encode("utf-8"))
    return {"event": "done", "id": request.get("id"), "report": request["report"], "plot": None,
            "readout": answer["readout"], "seconds": round(time.monotonic() - started, 3)}


# ------------------------------------------------------------------------------------ the runner
@dataclass
class _Run:
    request_id: str
    callbacks: RunCallbacks
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    job_id: str | None = None


class RemoteRunner(RunDelivery):
    """The local :class:`~DuPLUSLib.segment_process.BackgroundRunner`'s interface, for a remote server.

    ``submit`` takes the same request dict (``input``, ``prompts``, ``output``, ``report``,
    ``modality``; ``model`` must be empty: the server chose its model at start, and ``device`` is
    the server's) and returns at once; the HTTP work runs on a background thread and everything it
    learns is queued, so the callbacks run on the thread that calls :meth:`poll`, as with the local
    worker. :meth:`cancel` returns at once, calls ``on_cancelled``, and cancels the job on the
    server (its files are removed there).
    """

    def __init__(self, client: ServerClient, poll_interval_s: float = 0.25, lost_after_s: float = 15.0,
                 job_name: str = "segmentation"):
        self.client = client
        self.job_name = job_name  # names the work in messages, as BackgroundRunner's does
        self.poll_interval_s = poll_interval_s
        self.lost_after_s = lost_after_s
        self.state = RunnerState.IDLE
        self.warm = True  # the model stays warm on the server; kept for the Logic's setWarm
        self._run: _Run | None = None
        self._events: "queue.Queue[tuple[_Run, str, Any]]" = queue.Queue()
        self._ids = itertools.count(1)

    @property
    def worker_pid(self) -> None:
        return None  # the worker is on another computer

    def prestart(self) -> None:
        """Nothing to start here: the server's model is already warm."""

    def submit(self, request: dict[str, Any], callbacks: RunCallbacks | None = None) -> str:
        self._refuse_if_busy()
        if request.get("kind") == "prognosis":
            check_remote_prognosis_request(request)
        elif request.get("model"):
            from .errors import ModelBundleError

            raise ModelBundleError(
                "a model folder cannot be chosen for a remote run: the server uses the model it was started "
                "with (duplus serve --model); leave the model folder empty"
            )
        run = _Run(str(request.get("id") or f"remote-{next(self._ids)}"), callbacks or RunCallbacks())
        self._run, self.state = run, RunnerState.STARTING
        threading.Thread(target=self._serve, args=(run, dict(request)), name="duplus-remote", daemon=True).start()
        return run.request_id

    def poll(self) -> bool:
        """Deliver what the server said since the last call; returns whether a run is still going."""
        while True:
            try:
                run, kind, payload = self._events.get_nowait()
            except queue.Empty:
                return self.busy
            if run is not self._run:
                continue  # news of a run that was cancelled
            if kind == "progress":
                self._deliver_progress(*payload, running=payload[0] not in ("uploading", "queued"))
            elif kind == "done":
                self._deliver_done(payload)
            elif kind == "error":
                self._finish_with_error(payload)
            if not self.busy:
                return False

    def cancel(self) -> None:
        if not self.busy:
            return
        run = self._run
        run.cancelled.set()
        if run.job_id is not None:
            threading.Thread(target=_forget_job, args=(self.client, run.job_id, True), daemon=True).start()
        self._run, self.state = None, RunnerState.IDLE
        if run.callbacks.on_cancelled:
            run.callbacks.on_cancelled()

    def shutdown(self) -> None:
        self.cancel()

    # ---------------------------------------------------------------------------- internals
    def _serve(self, run: _Run, request: dict[str, Any]) -> None:
        def progress(stage: str, fraction: float, message: str) -> None:
            self._events.put((run, "progress", (stage, fraction, message)))

        def submitted(job_id: str) -> None:
            run.job_id = job_id
            if run.cancelled.is_set():  # cancelled while uploading: the cancel found no job id to send
                _forget_job(self.client, job_id, quietly=True)

        try:
            if request.get("kind") == "prognosis":
                done = predict_prognosis_remote(self.client, request, progress)
            else:
                done = run_job(self.client, request["input"], request["prompts"], request["output"],
                               report=request.get("report"), modality=request.get("modality"), progress=progress,
                               cancel=run.cancelled.is_set, poll_interval_s=self.poll_interval_s,
                               lost_after_s=self.lost_after_s, on_submitted=submitted)
        except CancelledError as error:
            if not run.cancelled.is_set():  # cancelled on the server by someone else
                self._events.put((run, "error", error))
            return
        except Exception as error:  # every failure reaches the caller as an error callback
            self._events.put((run, "error", error))
            return
        self._events.put((run, "done", done))


# ------------------------------------------------------------------------------------ helpers
class _UploadStream:
    """The file as http.client reads it, in blocks: reports upload progress, stops on cancel."""

    def __init__(self, stream, size: int, progress: ProgressCallback | None, cancel: CancelCallback | None):
        self._stream = stream
        self._size = max(1, size)
        self._sent = 0
        self._progress = progress
        self._cancel = cancel
        self._last_report = 0.0

    def read(self, amount: int = -1) -> bytes:
        if self._cancel and self._cancel():
            raise CancelledError("segmentation cancelled")
        block = self._stream.read(1 << 16 if amount is None or amount < 0 else max(amount, 1 << 16))
        self._sent += len(block)
        now = time.monotonic()
        if self._progress and (now - self._last_report > 0.2 or not block):
            self._last_report = now
            self._progress("uploading", min(1.0, self._sent / self._size),
                           f"sent {self._sent / 2**20:.1f} of {self._size / 2**20:.1f} MiB")
        return block


class _atomic_file:
    """Write ``path`` under a temporary name in its folder; rename on success, remove on failure."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        folder = self.path.parent
        if not folder.is_dir():
            raise OutputPathError(f"cannot write '{self.path}': folder '{folder}' does not exist")
        try:
            handle, self._temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=folder)
        except OSError as error:
            raise OutputPathError(f"cannot write '{self.path}': {error.strerror or error}") from None
        self._stream = os.fdopen(handle, "wb")
        return self._stream

    def __exit__(self, kind, value, traceback) -> None:
        self._stream.close()
        if kind is None:
            os.replace(self._temporary, self.path)
        else:
            os.unlink(self._temporary)


def _uploadable(path: Path) -> bool:
    try:
        upload_format(path)
    except InputImageError:
        return False
    return True


def _quote(job_id: str) -> str:
    return urllib.parse.quote(str(job_id), safe="")


# ------------------------------------------------------------------------------------ command line
def segment_file_remote(
    client: ServerClient,
    input_path: str | os.PathLike[str],
    prompts: Sequence[str],
    output: str | os.PathLike[str],
    report: str | os.PathLike[str] | None = None,
    modality: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    series_uid: str | None = None,
    format: str | None = None,
    split: bool = False,
) -> dict:
    """``duplus segment ... --server``: what :func:`~DuPLUSLib.inference.segment_file` does, on the server.

    Outputs and prompts are checked here before anything is sent; a DICOM folder (or an .nhdr or
    .mhd file, which name a second file) is converted to NRRD locally first, which needs SimpleITK
    but not PyTorch. The server sends a ``.seg.nrrd``; another ``format`` (NIfTI, split NIfTI, DICOM
    SEG) is written here from it by the same writers as a local run (:mod:`.formats`). A DICOM SEG
    is made on this side because only this side holds the DICOM series it must reference.
    """
    from .formats import check_format_input, check_output_files, convert_segmentation, format_for_path
    from .imageio import check_output_path
    from .ontology import load_ontology

    format = format or ("nifti" if split else format_for_path(output))
    parsed = load_ontology().parse_many(prompts, modality)  # a typo fails before the upload
    check_output_files(output, format, [p.structure for p in parsed], split, overwrite)
    if report is not None:
        check_output_path(report, overwrite)
    source = Path(input_path)
    if not source.exists():
        raise InputImageError(f"input image '{source}' does not exist")
    check_format_input(format, source, source.is_dir())
    keys = [prompt.key for prompt in parsed]  # the server parses them again, expanded: 'CT/abdomen/*' is sent as each structure
    with tempfile.TemporaryDirectory(prefix="duplus-upload-") as folder:
        upload, image = source, None
        if series_uid is not None or source.is_dir() or not _uploadable(source):
            from .imageio import read_image, write_image

            if progress:
                progress("loading", 0.0, f"converting {source.name} to NRRD for the upload")
            image = read_image(source, series_uid)
            upload = write_image(image, Path(folder) / "input.nrrd")
        if format == "seg.nrrd":
            done = run_job(client, upload, keys, output, report=report, modality=modality,
                           progress=progress, cancel=cancel, reported_input=source)
            return {**done, "format": format, "split": False, "files": [str(Path(output))]}
        downloaded = Path(folder) / "result.seg.nrrd"
        done = run_job(client, upload, keys, downloaded, report=report, modality=modality,
                       progress=progress, cancel=cancel, reported_input=source, reported_output=output)
        if progress:
            progress("writing", 0.0, f"writing {Path(output).name} ({format})")
        confidences = {entry.get("structure"): entry.get("confidence") for entry in done.get("segments") or []}
        written = convert_segmentation(downloaded, parsed, output, format, split=split, overwrite=overwrite,
                                       confidences=confidences, reference=image)  # DICOM input: image was read above
    output_name = str(written[0].parent) if format == "nifti" and split else str(Path(output))
    return {**done, "output": output_name, "format": format, "split": bool(split and format == "nifti"),
            "files": [str(path) for path in written]}
