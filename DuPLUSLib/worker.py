"""The background process the Slicer modules talk to: ``python -m DuPLUSLib.worker``.

Segmentation and prognosis run outside Slicer's process so the GUI stays responsive, a crash in
native code cannot take the user's scene with it, and Cancel can end the work at once by ending
the process. Loading torch and the model takes seconds, so the worker stays alive between requests
("warm") and keeps the last segmentation model loaded.

Protocol: JSON, one object per line, UTF-8.

Requests on stdin, of two kinds (``kind`` defaults to ``segment``)::

    {"id": "1", "input": "/tmp/in.nrrd", "prompts": ["CT/abdomen/liver"], "output": "/tmp/out.seg.nrrd",
     "model": null, "device": "auto", "report": "/tmp/out.json", "modality": null, "overwrite": false}
    {"id": "2", "kind": "prognosis", "ehr": {"age": 63, "stage": "III"}, "report": "/tmp/risk.json",
     "plot": "/tmp/km.png", "model": null, "image": null, "segmentation": null}
    {"command": "ping"}     answered by {"event": "pong"}
    {"command": "quit"}     answered by {"event": "bye"}, then the worker exits 0 (so does EOF)

A prognosis request's ``ehr`` holds the EHR fields and any further columns the model was trained
with (checked against the model's saved column list before torch loads).

Events on stdout (nothing else is ever written there; stray prints go to stderr)::

    {"event": "ready", "pid": 123, "version": "0.1.0", "protocol": 2}
    {"event": "progress", "id": "1", "stage": "inference", "fraction": 0.4, "message": "..."}
    {"event": "done", "id": "1", "output": ..., "report": ..., "segments": [...],
     "model_reused": true, "model_load_s": 0.0, "seconds": 3.2, "device": "cpu"}
    {"event": "done", "id": "2", "report": ..., "plot": ..., "readout": {...}, "seconds": 1.1}
    {"event": "error", "id": "1", "error": "UnknownPromptError", "message": "..."}

A package missing from the worker's Python is reported as ``MissingDependencyError`` naming it.
A failed request leaves the worker serving the next one. SIGTERM or SIGINT stops promptly: while
idle the worker exits at once; while segmenting the run is cancelled between windows (an error
event ``CancelledError`` is written, nothing is left half-written) and the worker exits; a second
signal exits immediately. The Slicer module cancels by ending the whole process tree and starts a
new worker for the next request.

``--import-early`` starts importing PyTorch and MONAI right after ``ready``, for a worker started
ahead of the first request. ``--once`` serves exactly one request (read from stdin, or given with ``--request``) and exits
with 0, 2 (refused or failed) or 130 (cancelled).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import IO, Any, Callable, Sequence

from . import __version__
from .errors import CancelledError, DuPLUSError, MissingDependencyError
from .progress import Stage

__all__ = ["PROTOCOL_VERSION", "REQUEST_FIELDS", "Worker", "main"]

PROTOCOL_VERSION = 2  # 2: the "kind" field, and prognosis requests
# Request kind -> (required fields, optional fields).
REQUEST_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "segment": (("input", "prompts", "output"), ("model", "device", "report", "modality", "overwrite", "preview")),
    "prognosis": (("ehr", "report"), ("model", "image", "segmentation", "plot", "overwrite")),
}
COMMON_FIELDS = ("id", "kind")


class ProtocolError(DuPLUSError):
    """A request line that is not a valid request (bad JSON, missing fields)."""


class Worker:
    """Serves segmentation requests, keeping one model loaded between them.

    ``emit`` receives every event as a dict; the command-line entry point writes them as JSON lines.
    ``cancel`` is polled by the engine between sliding windows.
    """

    def __init__(self, emit: Callable[[dict], None], cancel: Callable[[], bool] = lambda: False):
        self.emit = emit
        self.cancel = cancel
        self._segmenter = None
        self._segmenter_key: tuple[str | None, str] | None = None

    # ------------------------------------------------------------------------------ one line in
    def handle_line(self, line: str) -> bool:
        """Serve one request line; returns False when the worker should stop."""
        line = line.strip()
        if not line:
            return True
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as error:
            self.emit(_error_event(None, ProtocolError(f"not a JSON request: {error}")))
            return True
        command = message.get("command")
        if command == "quit":
            self.emit({"event": "bye"})
            return False
        if command == "ping":
            self.emit({"event": "pong", "id": message.get("id")})
            return True
        if command is not None:
            self.emit(_error_event(message.get("id"), ProtocolError(f"unknown command '{command}'")))
            return True
        return self.handle_request(message)

    def handle_request(self, request: dict[str, Any]) -> bool:
        """Serve one request and emit done or error; returns False after a cancellation."""
        request_id = request.get("id")
        try:
            kind = _check_request(request)
            self.emit(self._segment(request) if kind == "segment" else self._predict(request))
        except CancelledError as error:
            self.emit(_error_event(request_id, error))
            return False
        except DuPLUSError as error:
            self.emit(_error_event(request_id, error))
        except ImportError as error:  # this Python lacks a package: say which, and what to do
            missing = getattr(error, "name", None) or str(error)
            self.emit(_error_event(request_id, MissingDependencyError(
                f"the worker's Python lacks the package '{missing}'; install the extension's Python "
                f"packages (Slicer asks on the first run) and try again")))
        except MemoryError as error:
            self.emit({"event": "error", "id": request_id, "error": "ResourceLimitError",
                       "message": f"out of memory: {str(error) or 'the volume is too large'}; crop the volume "
                                  "or ask for fewer structures at once"})
        except Exception as error:  # a bug must reach the user as a message, not a silent worker
            traceback.print_exc(file=sys.stderr)
            self.emit({"event": "error", "id": request_id, "error": "InternalError",
                       "message": f"unexpected {type(error).__name__}: {error}"})
        return True

    # ------------------------------------------------------------------------------ the work
    def _predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """A prognosis request: the EHR (and the image with its tumour) -> readout, report, plot."""
        request_id = request.get("id")
        started = time.perf_counter()

        def progress(stage: Stage, fraction: float, message: str) -> None:
            self.emit({"event": "progress", "id": request_id, "stage": stage.value,
                       "fraction": round(float(fraction), 4), "message": message})

        from .prognosis.form import validate_patient

        values = validate_patient(request["ehr"], request.get("model"))  # a bad form fails before torch loads
        progress(Stage.LOADING, 0.0, "loading the prognosis model")
        from .prognosis.bundle import load_prognosis_bundle
        from .prognosis.pipeline import predict_patient, write_readout

        bundle = load_prognosis_bundle(request.get("model"))
        if self.cancel():
            raise CancelledError("prediction cancelled")
        progress(Stage.PREDICTING, 0.0, "encoding the record" + (" and measuring the tumour" if request.get("image") else ""))
        readout = predict_patient(bundle, values, request.get("image"), request.get("segmentation"))
        if self.cancel():
            raise CancelledError("prediction cancelled")
        progress(Stage.WRITING, 0.0, "writing the report")
        write_readout(readout, bundle, request["report"], request.get("plot"), bool(request.get("overwrite", True)))
        return {"event": "done", "id": request_id, "report": request["report"], "plot": request.get("plot"),
                "readout": readout.to_dict(), "seconds": round(time.perf_counter() - started, 3)}

    def _segment(self, request: dict[str, Any]) -> dict[str, Any]:
        request_id = request.get("id")
        started = time.perf_counter()

        def progress(stage: str, fraction: float, message: str) -> None:
            self.emit({"event": "progress", "id": request_id, "stage": stage,
                       "fraction": round(float(fraction), 4), "message": message})

        from .ontology import load_ontology

        prompts = load_ontology().parse_many(request["prompts"], request.get("modality"))  # parsed once; a typo fails at once
        if "DuPLUSLib.inference" not in sys.modules:  # the first request pays for the imports: say so
            progress("loading", 0.0, "starting PyTorch and MONAI")
        from .inference import segment_file

        segmenter, reused, load_seconds = self.segmenter_for(request.get("model"), request.get("device") or "auto", progress)
        summary = segment_file(
            request["input"],
            prompts,
            request["output"],
            segmenter=segmenter,
            modality=request.get("modality"),
            report=request.get("report"),
            preview=request.get("preview"),
            overwrite=bool(request.get("overwrite", False)),
            progress=progress,
            cancel=self.cancel,
        )
        return {
            "event": "done",
            "id": request_id,
            "output": summary.get("output"),
            "report": summary.get("report"),
            "preview": summary.get("preview"),
            "segments": summary.get("segments", []),
            "device": summary.get("device"),
            "model": summary.get("model"),
            "model_reused": reused,
            "model_load_s": round(load_seconds, 3),
            "seconds": round(time.perf_counter() - started, 3),
        }

    def segmenter_for(self, model: str | None, device: str, progress=None):
        """The loaded segmenter for this model folder and device, loading it only when it changed.

        Returns ``(segmenter, reused, seconds spent loading)``. A model folder is checked (sha256)
        each time it is loaded, never silently reused across different folders.
        """
        from .bundle import load_bundle
        from .inference import Segmenter

        key = (os.path.realpath(model) if model else None, device.lower())
        if self._segmenter is not None and key == self._segmenter_key:
            return self._segmenter, True, 0.0
        if progress:
            progress("loading", 0.5, "loading the model")
        started = time.perf_counter()
        self._segmenter = self._segmenter_key = None  # free the old model before loading another
        segmenter = Segmenter(load_bundle(model) if model else None, device=device)
        self._segmenter, self._segmenter_key = segmenter, key
        return segmenter, False, time.perf_counter() - started


def _check_request(request: dict[str, Any]) -> str:
    """The request's kind, after checking its fields; a malformed request raises ProtocolError."""
    kind = request.get("kind") or "segment"
    if kind not in REQUEST_FIELDS:
        raise ProtocolError(f"unknown request kind '{kind}'; choose one of: {', '.join(REQUEST_FIELDS)}")
    required, optional = REQUEST_FIELDS[kind]
    missing = [name for name in required if not request.get(name)]
    if missing:
        raise ProtocolError(f"request lacks {', '.join(missing)}")
    unknown = set(request) - set(required) - set(optional) - set(COMMON_FIELDS)
    if unknown:
        raise ProtocolError(f"request has unknown field(s): {', '.join(sorted(unknown))}")
    if kind == "segment" and (isinstance(request["prompts"], str)
                              or not all(isinstance(p, str) for p in request["prompts"])):
        raise ProtocolError("'prompts' must be a list of strings")
    if kind == "prognosis" and not isinstance(request["ehr"], dict):
        raise ProtocolError("'ehr' must be an object of field: value pairs")
    return kind


def _error_event(request_id: Any, error: BaseException) -> dict[str, Any]:
    return {"event": "error", "id": request_id, "error": type(error).__name__, "message": str(error)}


# ------------------------------------------------------------------------------ the process
class _EventWriter:
    """Writes events to the protocol channel, one JSON line each, from any thread."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        line = json.dumps(event, default=str)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError):  # the reader is gone: nobody left to tell
                pass


def _claim_stdout() -> IO[str]:
    """Keep the real stdout for events and send everything else written there to stderr.

    Libraries print warnings and progress bars; one stray line would corrupt the protocol.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(protocol_fd, "w", encoding="utf-8", buffering=1)


class _StopSignals:
    """SIGTERM/SIGINT: exit when idle, cancel between windows when busy, exit at once when repeated."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.busy = False

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested.is_set():
            os._exit(128 + signum)
        self.requested.set()
        if not self.busy:
            raise SystemExit(0)

    def cancelled(self) -> bool:
        return self.requested.is_set()


def _exit_when_orphaned(interval_s: float = 1.0) -> None:
    """End the worker if the program that started it dies without closing our stdin (killed, or
    stdin shared with another process): no model stays loaded and no CPU is burnt for nobody."""
    parent = os.getppid()

    try:  # Slicer bundles no psutil: then a changed parent (POSIX re-parents orphans) is the sign
        from psutil import pid_exists
    except ImportError:
        def pid_exists(pid: int) -> bool:  # noqa: ARG001
            return True

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent or not pid_exists(parent):
                _exit_now(0)

    threading.Thread(target=watch, name="duplus-orphan-watch", daemon=True).start()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m DuPLUSLib.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="serve one request and exit")
    parser.add_argument("--request", help="with --once: the request as JSON instead of reading stdin")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--preload", action="store_true", help="load the model before reporting ready")
    parser.add_argument("--model", help="with --preload: the model folder (default: the bundled model)")
    parser.add_argument("--device", default="auto", help="with --preload: auto, cpu, cuda or mps")
    parser.add_argument("--import-early", action="store_true",
                        help="import PyTorch and MONAI in the background while waiting for the first request")
    return parser


def _import_engine_in_background() -> None:
    """Pay the seconds of importing torch and MONAI while the user is still choosing prompts.

    The first request then finds the modules loaded; if it arrives sooner, Python's import lock
    makes it wait for this import instead of starting a second one.
    """

    def load() -> None:
        try:
            import DuPLUSLib.inference  # noqa: F401
        except Exception:  # the request itself will report the problem with its context
            pass

    threading.Thread(target=load, name="duplus-import-early", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    emit = _EventWriter(_claim_stdout())
    _exit_when_orphaned()
    signals = _StopSignals()
    signals.install()
    worker = Worker(emit, cancel=signals.cancelled)
    try:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        if args.preload:
            signals.busy = True
            try:
                worker.segmenter_for(args.model, args.device)
            except DuPLUSError as error:
                emit(_error_event(None, error))
                return 2
            finally:
                signals.busy = False
        emit({"event": "ready", "pid": os.getpid(), "version": __version__, "protocol": PROTOCOL_VERSION})
        if args.import_early and not args.once:
            _import_engine_in_background()
        if args.once:
            return _serve_once(worker, signals, emit, args.request)
        return _serve_forever(worker, signals)
    except SystemExit as stop:  # a stop signal while idle
        return int(stop.code or 0)
    except KeyboardInterrupt:
        return 130


def _serve_forever(worker: Worker, signals: _StopSignals) -> int:
    for line in iter(sys.stdin.readline, ""):  # readline: no read-ahead, a request is served at once
        signals.busy = True
        try:
            keep_going = worker.handle_line(line)
        finally:
            signals.busy = False
        if not keep_going or signals.requested.is_set():
            return 0
    return 0  # EOF: the module closed our stdin or went away


def _serve_once(worker: Worker, signals: _StopSignals, emit: Callable[[dict], None], text: str | None) -> int:
    text = text if text is not None else sys.stdin.readline()
    outcome: list[dict] = []

    def remember(event: dict) -> None:
        outcome.append(event)
        emit(event)

    worker.emit = remember
    signals.busy = True
    try:
        worker.handle_line(text)
    finally:
        signals.busy = False
    last = outcome[-1] if outcome else {"event": "error", "error": "ProtocolError"}
    if last.get("event") == "done":
        return 0
    return 130 if last.get("error") == "CancelledError" else 2


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: unloading torch, MONAI and transformers takes
    seconds, during which a quitting worker would still hold its memory and its slot."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
