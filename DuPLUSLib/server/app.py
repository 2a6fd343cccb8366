"""The FastAPI application of ``duplus serve``: endpoints, API key, limits and logs.

What a request may do is decided here, before any work:

* the API key (when the server has one) is checked first, in constant time, before the body is
  read; a missing or wrong key gets 401 and nothing else happens;
* a client that names another protocol version is refused, with both versions named;
* no parameter names a file or folder on the server: the model, device and work folder were fixed
  when the server started, and every query parameter an endpoint does not know is refused;
* uploads are streamed to the job's folder and cut off at the size limit; the header is checked
  before the job is queued; anything refused leaves nothing on disk;
* the log names requests, jobs and sizes; never keys, prompts' images or voxel data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import DuPLUSError, ResourceLimitError, UnknownPromptError
from ..worker import ProtocolError
from .jobs import JobQueue, check_upload, public_report
from .protocol import (
    API_PREFIX,
    ERROR_STATUS,
    OPEN_PATHS,
    PROTOCOL_HEADER,
    RESULT_FORMATS,
    SERVER_PROTOCOL,
    UPLOAD_FORMATS,
    VERSION_HEADER,
    UnsupportedFormatError,
)

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("duplus.serve")

MAX_JSON_BODY = 64 * 1024  # a prognosis request is a few hundred bytes of EHR
# An upload over the limit is read to its end (and thrown away) up to this much more, so that the
# client, which is still sending, receives the 413 instead of a reset connection.
DRAIN_BYTES = 256 * 2**20


@dataclass
class ServerSettings:
    """Everything fixed at server start; nothing here can be changed by a request."""

    api_key: str | None = None
    max_upload_bytes: int = 2 * 2**30
    max_voxels: int = 1_000_000_000
    prognosis_model: str | None = None


def create_app(queue: JobQueue, settings: ServerSettings) -> FastAPI:
    """The application serving ``queue``; the queue's model is loaded and its thread started by the caller."""
    app = FastAPI(title="DuPLUS server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_ClientChecks, api_key=settings.api_key)
    app.add_middleware(_RequestLog)
    prognosis = _PrognosisService(settings.prognosis_model)

    @app.exception_handler(DuPLUSError)
    async def library_error(request: Request, error: DuPLUSError) -> JSONResponse:
        return _error_response(error)

    # ---------------------------------------------------------------------------- about the server
    @app.get(f"{API_PREFIX}/health")
    async def health(request: Request) -> dict:
        _only_parameters(request)
        return {"service": "duplus", "status": "ok", "version": __version__, "protocol": SERVER_PROTOCOL}

    @app.get(f"{API_PREFIX}/info")
    async def info(request: Request) -> dict:
        _only_parameters(request)
        segmenter = queue.segmenter
        bundle = segmenter.bundle
        return {
            "service": "duplus",
            "version": __version__,
            "protocol": SERVER_PROTOCOL,
            "model": {
                "name": bundle.config.name,
                "description": bundle.config.description,
                "modalities": list(bundle.network.config.modalities),
                "sha256": (bundle.config.files.get("weights") or {}).get("sha256"),
            },
            "device": _describe_device(segmenter.device),
            "queue": queue.counts(),
            "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_voxels": settings.max_voxels,
                       "max_queue": queue.max_queue, "keep_results_s": queue.keep_results_s},
            "upload_formats": sorted(UPLOAD_FORMATS),
            "result_formats": sorted(RESULT_FORMATS),
        }

    @app.get(f"{API_PREFIX}/ontology")
    async def ontology(request: Request) -> dict:
        _only_parameters(request)
        segmenter = queue.segmenter
        modalities = [m for m in segmenter.ontology.hierarchy if m in segmenter.bundle.network.config.modalities]
        return {**segmenter.ontology.listing(modalities), "model": segmenter.bundle.config.name}

    # ---------------------------------------------------------------------------- jobs
    @app.post(f"{API_PREFIX}/jobs", status_code=202)
    async def submit(request: Request) -> dict:
        _only_parameters(request, "prompt", "modality", "format")
        prompts = request.query_params.getlist("prompt")
        modality = request.query_params.get("modality") or None
        fmt = request.query_params.get("format", "nrrd")
        if fmt not in UPLOAD_FORMATS:
            raise UnsupportedFormatError(
                f"upload format '{fmt}' is not taken; send one of: {', '.join(sorted(UPLOAD_FORMATS))}"
            )
        if not prompts:
            raise UnknownPromptError("no prompt given; add prompt=MODALITY/REGION/STRUCTURE, e.g. CT/abdomen/liver")
        parsed = await run_in_threadpool(queue.segmenter.parse_prompts, prompts, modality)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            if int(declared) - settings.max_upload_bytes <= DRAIN_BYTES:
                await _drain(request.stream(), 0)
            raise _too_large(int(declared), settings.max_upload_bytes)
        job = queue.new_job([p.key for p in parsed], modality, UPLOAD_FORMATS[fmt])
        try:
            job.upload_bytes = await _store_upload(request, job.input_path, settings.max_upload_bytes)
            await run_in_threadpool(check_upload, job.input_path, fmt, settings.max_voxels)
            position = queue.enqueue(job)
        except BaseException:
            queue.discard(job)
            raise
        return {"id": job.id, "state": "queued", "position": position}

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}")
    async def job_status(job_id: str, request: Request) -> dict:
        _only_parameters(request, "after")
        after = request.query_params.get("after", "0")
        if not after.isdigit():
            raise ProtocolError(f"'after' must be a whole number of events, not '{after}'")
        return queue.status(job_id, int(after))

    @app.delete(f"{API_PREFIX}/jobs/{{job_id}}")
    async def cancel(job_id: str, request: Request) -> dict:
        _only_parameters(request)
        return queue.cancel(job_id)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/result")
    async def result(job_id: str, request: Request) -> FileResponse:
        _only_parameters(request, "format")
        fmt = request.query_params.get("format", "seg.nrrd")
        if fmt not in RESULT_FORMATS:
            dicom = (" A DICOM SEG must reference the DICOM series, which only the client holds: "
                     "'duplus segment SERIES -o result.dcm --server URL' writes it there.")
            raise UnsupportedFormatError(
                f"result format '{fmt}' is not offered; choose one of: {', '.join(sorted(RESULT_FORMATS))}."
                + (dicom if "dcm" in fmt or "dicom" in fmt else "")
            )
        path = await run_in_threadpool(queue.result_file, job_id, fmt)  # NIfTI is written on first request
        name, media_type = RESULT_FORMATS[fmt]
        log.info("job %s: result sent (%.1f MB)", job_id[:8], path.stat().st_size / 1e6)
        return FileResponse(path, media_type=media_type, filename=name)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/report")
    async def report(job_id: str, request: Request) -> dict:
        _only_parameters(request)
        path = queue.result_file(job_id, "seg.nrrd").with_name("report.json")
        return public_report(json.loads(path.read_text(encoding="utf-8")))

    # ---------------------------------------------------------------------------- prognosis
    @app.post(f"{API_PREFIX}/prognosis")
    async def predict_prognosis(request: Request) -> dict:
        _only_parameters(request)
        body = await _read_json(request)
        unknown = set(body) - {"ehr", "plot"}
        if unknown or not isinstance(body.get("ehr"), dict):
            raise ProtocolError(
                'the body must be {"ehr": {field: value, ...}, "plot": false}'
                + (f"; unknown key(s): {', '.join(sorted(unknown))}" if unknown else "")
            )
        return await run_in_threadpool(prognosis.predict, body["ehr"], bool(body.get("plot", False)))

    return app


# ------------------------------------------------------------------------------ middleware
class _ClientChecks:
    """The API key, then the protocol version, before the request reaches any endpoint.

    A plain ASGI middleware, so a refused request is answered before its body is read.
    """

    def __init__(self, app, api_key: str | None):
        self.app = app
        self._key_digest = hashlib.sha256(api_key.encode("utf-8")).digest() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        if self._key_digest is not None and scope["path"] not in OPEN_PATHS:
            if not self._key_matches(headers.get("authorization", "")):
                client = (scope.get("client") or ("?", 0))[0]
                reason = "no API key" if not headers.get("authorization") else "a wrong API key"
                log.warning("refused %s %s from %s: %s", scope["method"], scope["path"], client, reason)
                response = _error_response(_Refusal(
                    "AuthenticationError",
                    f"this server needs its API key ({reason} was sent); send the key the server was started with "
                    "as 'Authorization: Bearer KEY' (in Slicer: the API key field; on the command line: "
                    "--api-key-file)",
                ), headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        client_protocol = headers.get(PROTOCOL_HEADER.lower())
        if client_protocol is not None and client_protocol.strip() != str(SERVER_PROTOCOL):
            client_version = headers.get(VERSION_HEADER.lower(), "unknown")
            response = _error_response(_Refusal(
                "ProtocolMismatchError",
                f"this client speaks DuPLUS server protocol {client_protocol.strip()} (DuPLUS {client_version}) but the "
                f"server speaks protocol {SERVER_PROTOCOL} (DuPLUS {__version__}); install the same DuPLUS version "
                "on both sides",
            ))
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _key_matches(self, authorization: str) -> bool:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        # Compare digests of equal length: the time taken does not depend on the key or its length.
        return hmac.compare_digest(hashlib.sha256(given.strip().encode("utf-8")).digest(), self._key_digest)


class _RequestLog:
    """One log line per request: method, path (no query string), status, size, time, client."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            client = (scope.get("client") or ("?", 0))[0]
            log.info("%s %s -> %d in %.0f ms from %s", scope["method"], scope["path"], status["code"],
                     1000 * (time.perf_counter() - started), client)


# ------------------------------------------------------------------------------ prognosis
class _PrognosisService:
    """The prognosis model, loaded on the first request and kept; one prediction at a time."""

    def __init__(self, model: str | None):
        self.model = model
        self._bundle = None
        self._lock = threading.Lock()

    def predict(self, ehr: dict[str, Any], plot: bool) -> dict[str, Any]:
        from ..prognosis.bundle import load_prognosis_bundle
        from ..prognosis.form import validate_patient
        from ..prognosis.pipeline import predict_patient, report_payload

        record = validate_patient(ehr, self.model)  # as the worker's prognosis requests: the model's own fields
        with self._lock:
            if self._bundle is None:
                self._bundle = load_prognosis_bundle(self.model)
            bundle = self._bundle
            if bundle.uses_image:
                from ..prognosis.ehr import EHRValidationError

                raise EHRValidationError(
                    "this server's prognosis model uses image features, which the server does not take yet; "
                    "start it with an EHR-only model (--prognosis-model)"
                )
            readout = predict_patient(bundle, record)
            payload = report_payload(readout, bundle)
            payload["model"] = bundle.path.name if bundle.path else None
            if plot:
                payload["plot_png"] = _plot_png(readout, bundle)
        log.info("prognosis predicted")
        return payload


def _plot_png(readout, bundle) -> str:
    import tempfile

    from ..prognosis.readout import plot_readout

    with tempfile.TemporaryDirectory(prefix="duplus-plot-") as folder:
        path = Path(folder) / "km.png"
        plot_readout(readout, bundle.reference, path)
        return base64.b64encode(path.read_bytes()).decode("ascii")


# ------------------------------------------------------------------------------ helpers
class _Refusal(Exception):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def _error_response(error: BaseException, headers: dict | None = None) -> JSONResponse:
    name = error.name if isinstance(error, _Refusal) else type(error).__name__
    return JSONResponse({"error": name, "message": str(error)}, status_code=ERROR_STATUS.get(name, 500),
                        headers=headers)


def _headers(scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def _only_parameters(request: Request, *allowed: str) -> None:
    """Refuse parameters the endpoint does not take, so none can smuggle in a server path."""
    unknown = sorted(set(request.query_params.keys()) - set(allowed))
    if unknown:
        takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes none"
        raise ProtocolError(
            f"unknown parameter(s) {', '.join(repr(u) for u in unknown)} for {request.url.path}; {takes}. "
            "The model, device and folders are chosen when the server starts"
        )


async def _drain(chunks, size: int) -> int:
    """Read the rest of a refused body without keeping it (up to :data:`DRAIN_BYTES` more)."""
    stop = size + DRAIN_BYTES
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > stop:
                break
    except ClientDisconnect:
        pass
    return size


def _too_large(size: int, limit: int, at_least: bool = False) -> ResourceLimitError:
    return ResourceLimitError(
        f"the upload is {'at least ' if at_least else ''}{size / 2**20:.1f} MiB but this server takes at most {limit / 2**20:.1f} MiB "
        "(duplus serve --max-upload-mb); crop or downsample the volume, or ask the server's administrator "
        "to raise the limit"
    )


async def _store_upload(request: Request, path: Path, limit: int) -> int:
    """Stream the body to ``path``, stopping at ``limit`` bytes. Returns the size."""
    size = 0
    chunks = request.stream()  # one iterator: a refused body is drained from where the copy stopped
    try:
        with open(path, "xb") as stream:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    break
                stream.write(chunk)
        if size > limit:
            path.unlink()
            size = await _drain(chunks, size)
            raise _too_large(size, limit, at_least=True)
    except ClientDisconnect:
        raise ProtocolError("the upload was interrupted; nothing was kept") from None
    if size == 0:
        from ..errors import InputImageError

        raise InputImageError("the upload is empty; send the volume file as the request body")
    return size


async def _read_json(request: Request) -> dict:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise ResourceLimitError(f"a JSON request may hold at most {MAX_JSON_BODY // 1024} KiB")
    try:
        value = json.loads(body or b"null")
    except ValueError as error:
        raise ProtocolError(f"the body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ProtocolError("the body must be a JSON object")
    return value


def _describe_device(device) -> str:
    if getattr(device, "type", None) == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device.index or 0)})"
    return str(device)
