"""What the DuPLUS server and its clients agree on. Standard library only.

Every endpoint is under ``/v1``; every answer is JSON except the result file. Errors come back as
``{"error": "<ErrorClass>", "message": "..."}`` with an HTTP status, the same pair the worker puts
in its ``error`` events, so a client turns them into the same exception classes
(:func:`DuPLUSLib.segment_process.error_from_event`).

    GET    /v1/health                       no key needed: {"service", "version", "protocol", "status"}
    GET    /v1/info                         model, device, queue, limits, formats
    GET    /v1/ontology                     the prompts the model knows (as ``duplus prompts --json``)
    POST   /v1/jobs?prompt=..&prompt=..&modality=..&format=nrrd
                                            body: the volume file itself, streamed; -> {"id", "state", "position"}
    GET    /v1/jobs/{id}?after=N            {"state", "position", "events": [worker events from N on], "next"}
    DELETE /v1/jobs/{id}                    cancel a queued or running job, or remove a finished job's files
    GET    /v1/jobs/{id}/result?format=seg.nrrd   the segmentation file (or nii.gz, labels.json)
    GET    /v1/jobs/{id}/report             the JSON report (no server paths in it)
    POST   /v1/prognosis                    body {"ehr": {...}, "plot": false} -> the prognosis readout

The key goes in ``Authorization: Bearer <key>``, never in the address. A client names its protocol
in ``X-DuPLUS-Protocol``; a server of another protocol refuses it, naming both versions.
"""

from __future__ import annotations

from ..errors import DuPLUSError
from ..segment_process import WorkerError

__all__ = [
    "API_PREFIX",
    "AuthenticationError",
    "JobNotFoundError",
    "JobStateError",
    "NIFTI_FORMATS",
    "OPEN_PATHS",
    "PROTOCOL_HEADER",
    "ProtocolMismatchError",
    "QueueFullError",
    "RESULT_FORMATS",
    "SERVER_PROTOCOL",
    "ServerError",
    "UPLOAD_FORMATS",
    "VERSION_HEADER",
]

SERVER_PROTOCOL = 1
API_PREFIX = "/v1"
PROTOCOL_HEADER = "X-DuPLUS-Protocol"
VERSION_HEADER = "X-DuPLUS-Version"
OPEN_PATHS = frozenset({f"{API_PREFIX}/health"})  # answered without a key: for load balancers and clients' first check

# Upload formats: the ``format`` parameter -> the suffix the server gives the stored file. Only
# single-file formats: .nhdr and .mhd name a second file, which an upload cannot carry (and a .nrrd
# or .mha whose header names one is refused: jobs.check_upload).
UPLOAD_FORMATS = {"nrrd": ".nrrd", "nii": ".nii", "nii.gz": ".nii.gz", "mha": ".mha"}

# Result formats the download endpoint offers: name -> (file name in the job folder, media type).
# The worker writes the .seg.nrrd; the multi-label NIfTI and its label table are written from it on
# their first download (jobs.JobQueue.result_file). There is no DICOM SEG here: it must reference
# the source DICOM series, which the server never receives (clients upload one volume file), so
# the client writes it (DuPLUSLib.remote.segment_file_remote).
RESULT_FORMATS = {
    "seg.nrrd": ("result.seg.nrrd", "application/octet-stream"),
    "nii.gz": ("result.nii.gz", "application/gzip"),
    "labels.json": ("result.labels.json", "application/json"),
}
NIFTI_FORMATS = ("nii.gz", "labels.json")

# HTTP status of each error class the server answers with (by class name; others: 500).
ERROR_STATUS = {
    "ProtocolError": 400,
    "ProtocolMismatchError": 400,
    "AuthenticationError": 401,
    "JobNotFoundError": 404,
    "JobStateError": 409,
    "ResourceLimitError": 413,
    "UnsupportedFormatError": 415,
    "UnknownPromptError": 422,
    "InputImageError": 422,
    "EHRValidationError": 422,
    "ModelBundleError": 422,
    "QueueFullError": 503,
    "CancelledError": 409,
}


class ServerError(WorkerError):
    """The server cannot be reached, is not a DuPLUS server, or failed in a way no other error names."""


class AuthenticationError(ServerError):
    """The API key is missing or wrong (HTTP 401); the request was not processed."""


class ProtocolMismatchError(ServerError):
    """Client and server speak different protocol versions; the message names both."""


class JobNotFoundError(ServerError):
    """No job of that id on the server (never submitted, or finished and removed)."""


class JobStateError(ServerError):
    """The job is not in a state that allows this (a result asked for before it is done)."""


class QueueFullError(ServerError):
    """The server's queue is full; try again later."""


class UnsupportedFormatError(DuPLUSError, ValueError):
    """An upload or result format the server does not offer; the message lists those it does."""
