"""Running background jobs from a GUI or a script: start, talk, poll, cancel, restart.

Both Slicer modules run their work (segmentation, prognosis) in the background worker
(:mod:`DuPLUSLib.worker`), as request kinds of the same protocol. Neither may block its GUI thread,
and Cancel must really stop the work. This module holds all of that, in plain Python so it is
tested without Qt:

* :class:`WorkerProcess` is one ``python -m DuPLUSLib.worker`` process: its events are read on a
  background thread into a queue, its stderr is kept as a log, and :meth:`~WorkerProcess.kill_tree`
  ends it *and every process it started* (killing only the launcher would leave the child running),
  with psutil where it is installed and through the process group (or ``taskkill /T``) where not:
  Slicer bundles no psutil.
* :class:`BackgroundRunner` is the small state machine on top (idle -> starting -> running ->
  importing -> idle; cancel goes straight to idle). Nothing happens on the reader thread except
  queueing: :meth:`~BackgroundRunner.poll` drains the queue and calls the callbacks on the caller's
  thread, from a ``qt.QTimer`` in Slicer or from :meth:`~BackgroundRunner.wait`'s loop in a script.

A warm worker (the default) is kept between requests, so the second run skips loading torch and
the model; after a cancel or a crash the next request starts a fresh one.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from .errors import DuPLUSError, error_class

__all__ = [
    "BackgroundRunner",
    "RunCallbacks",
    "RunnerState",
    "SegmentationRunner",
    "WorkerError",
    "WorkerProcess",
    "WorkerTimeoutError",
    "error_from_event",
    "worker_command",
    "worker_environment",
]


class WorkerError(DuPLUSError, RuntimeError):
    """The worker could not start, stopped unexpectedly, or failed in a way no other error names."""


class WorkerTimeoutError(WorkerError, TimeoutError):
    """A blocking run did not finish in the time given; it was cancelled."""


def wait_for_run(runner, job_name: str, timeout_s: float | None, interval_s: float,
                 between_polls: Callable[[], None] | None) -> None:
    """Poll ``runner`` until its run ends; on timeout cancel it and raise :class:`WorkerTimeoutError`.

    Shared by the local and the remote runner, so a console script sees the same error from both.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while runner.poll():
        if between_polls:
            between_polls()
        if deadline is not None and time.monotonic() > deadline:
            runner.cancel()
            raise WorkerTimeoutError(f"the {job_name} did not finish within {timeout_s:.0f} s and was cancelled")
        time.sleep(interval_s)


class RunnerState(str, Enum):
    IDLE = "idle"
    STARTING = "starting"  # a new worker is starting; the request waits in its stdin
    RUNNING = "running"  # the worker is on the request
    IMPORTING = "importing"  # the worker is done; its result is being brought into the caller


# ------------------------------------------------------------------------------ how to start it
def library_parent_folder() -> Path:
    """The folder that holds the ``DuPLUSLib`` package (a site-packages or Slicer's module folder)."""
    return Path(__file__).resolve().parent.parent


def default_python() -> str:
    """The interpreter for the worker: ``PythonSlicer`` inside Slicer, this Python elsewhere.

    Inside Slicer, ``sys.executable`` is the Slicer application itself; ``PythonSlicer`` beside it
    runs plain Python with Slicer's site-packages (where SlicerPyTorch installed torch).
    """
    try:
        import slicer  # noqa: F401

        in_slicer = getattr(slicer, "app", None) is not None
    except ImportError:
        in_slicer = False
    if in_slicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if beside.exists():
            return str(beside)
    return sys.executable


def worker_command(python: str | None = None, threads: int = 0, import_early: bool = False) -> list[str]:
    """The command line that starts a warm worker."""
    command = [python or default_python(), "-u", "-m", "DuPLUSLib.worker"]
    if threads:
        command += ["--threads", str(threads)]
    if import_early:
        command.append("--import-early")
    return command


def worker_environment(base: dict[str, str] | None = None, threads: int = 0) -> dict[str, str]:
    """The worker's environment: the library importable, output unbuffered, no network for models.

    ``base`` defaults to this process's environment; inside Slicer pass
    ``slicer.util.startupEnvironment()`` so the worker does not inherit Slicer's launcher settings.
    """
    env = dict(os.environ if base is None else base)
    parent = str(library_parent_folder())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parent not in paths:
        env["PYTHONPATH"] = os.pathsep.join([parent, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")  # models carry their prompt embeddings; never download
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def error_from_event(event: dict[str, Any]) -> DuPLUSError:
    """The library exception an ``error`` event names, with the worker's message."""
    name = str(event.get("error") or "WorkerError")
    message = str(event.get("message") or "the worker reported an error without a message")
    cls = error_class(name)  # the explicit registry of library errors (DuPLUSLib.errors)
    if cls is not None:
        try:
            return cls(message)
        except TypeError:  # a class that needs more than its message to be built
            pass
    return WorkerError(f"{name}: {message}")


# ------------------------------------------------------------------------------ one process
_LIVE_WORKERS: "weakref.WeakSet[WorkerProcess]" = weakref.WeakSet()


@atexit.register
def _end_live_workers() -> None:
    """No worker outlives the program that started it."""
    for worker in list(_LIVE_WORKERS):
        worker.kill_tree(grace_s=0.5)


class WorkerProcess:
    """One worker process and the thread that reads its events."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, log_lines: int = 200):
        self.command = list(command)
        self.env = env
        self.events: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._process: subprocess.Popen | None = None
        self._threads: list[threading.Thread] = []
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        creation = {"start_new_session": True} if os.name != "nt" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        }
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **creation,
            )
        except OSError as error:
            raise WorkerError(
                f"cannot start the background worker ({self.command[0]}): {error}; check that the "
                "extension's Python environment is installed"
            ) from None
        _LIVE_WORKERS.add(self)
        for target, name in ((self._read_events, "events"), (self._read_log, "log")):
            thread = threading.Thread(target=target, name=f"duplus-worker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        """Write one request line; a worker that is gone raises :class:`WorkerError`."""
        if not self.is_alive():
            raise WorkerError("the background worker is not running")
        line = json.dumps(message) + "\n"
        with self._write_lock:
            try:
                self._process.stdin.write(line)
                self._process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as error:
                raise WorkerError(f"the background worker stopped taking requests: {error}") from None

    def stderr_tail(self, lines: int = 8) -> list[str]:
        return list(self._stderr_tail)[-lines:]

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to quit; end its tree if it does not within ``timeout_s``."""
        if self.is_alive():
            try:
                self.send({"command": "quit"})
                self._process.stdin.close()
                self._process.wait(timeout_s)
            except (WorkerError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill_tree()

    def wait_for_exit(self, timeout_s: float) -> None:
        """Give a worker whose output has ended a moment to exit, so that its exit code is known."""
        if self._process is not None:
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass

    def kill_tree(self, grace_s: float = 1.0) -> None:
        """End the worker and every process below it: SIGTERM first (it stops between windows and
        writes nothing), SIGKILL for whatever is still there after ``grace_s``.

        Uses psutil where it is installed. Slicer bundles no psutil, so without it the worker's
        process group is signalled (it was started in a session of its own) or, on Windows,
        ``taskkill /T`` ends the tree; ``Popen.kill`` is the last resort.
        """
        process = self._process
        if process is None:
            return
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is not None:
            _kill_tree_with_psutil(psutil, process.pid, grace_s)
        else:
            _kill_tree_without_psutil(process, grace_s)
        if process.poll() is None:
            try:
                process.kill()
            except OSError:
                pass
        try:
            process.wait(timeout=5)  # reap it: no zombie left behind
        except subprocess.TimeoutExpired:
            pass
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        _LIVE_WORKERS.discard(self)

    # ------------------------------------------------------------------ reader threads
    def _read_events(self) -> None:
        stream = self._process.stdout
        try:
            for line in iter(stream.readline, ""):
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    self.events.put(("log", line))
                    continue
                self.events.put(("event", event) if isinstance(event, dict) else ("log", line))
        except (OSError, ValueError):
            pass
        self.events.put(("eof", None))

    def _read_log(self, ) -> None:
        stream = self._process.stderr
        try:
            for line in iter(stream.readline, ""):
                line = line.rstrip()
                if line:
                    self._stderr_tail.append(line)
                    self.events.put(("log", line))
        except (OSError, ValueError):
            pass


def _kill_tree_with_psutil(psutil, pid: int, grace_s: float) -> None:
    try:
        root = psutil.Process(pid)
        tree = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still_alive = psutil.wait_procs(tree, timeout=grace_s)
    for member in still_alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(still_alive, timeout=5)


def _kill_tree_without_psutil(process: subprocess.Popen, grace_s: float) -> None:
    """The same end without psutil: the whole process group on POSIX, ``taskkill /T`` on Windows."""
    if os.name == "nt":
        try:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            pass
        return
    group = process.pid  # start_new_session=True: the worker leads a group holding all it started
    if not _signal_group(group, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(group, process):
        time.sleep(0.02)
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False when no process of the group is left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid reused by someone else's process: not ours to signal
        return False
    return True


def _group_alive(group: int, process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader if it is done, or signal 0 still finds its zombie
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# ------------------------------------------------------------------------------ the state machine
@dataclass
class RunCallbacks:
    """What the runner calls, always on the thread that calls :meth:`BackgroundRunner.poll`.

    ``on_done`` receives the worker's ``done`` event and does the import (the runner is in the
    ``importing`` state meanwhile); an exception it raises is passed to ``on_error``.
    """

    on_progress: Callable[[str, float, str], None] | None = None
    on_log: Callable[[str], None] | None = None
    on_done: Callable[[dict], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_cancelled: Callable[[], None] | None = None


@dataclass
class _Run:
    request_id: str
    callbacks: RunCallbacks
    started: float = field(default_factory=time.monotonic)
    last_event: dict | None = None


class RunDelivery:
    """What a runner does with a run's news, local worker or remote server alike: it holds
    ``state``, the current ``_run`` (with ``callbacks`` and ``started``) and ``job_name``, and
    turns progress, a finished result and an error into the callbacks and the state machine's moves.
    """

    state: RunnerState
    job_name: str
    _run: Any

    @property
    def busy(self) -> bool:
        return self.state is not RunnerState.IDLE

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._run.started if self._run else 0.0

    def wait(
        self,
        timeout_s: float | None = None,
        interval_s: float = 0.05,
        between_polls: Callable[[], None] | None = None,
    ) -> None:
        """Poll until the current run ends (the console API's blocking form).

        ``between_polls`` runs between polls, e.g. ``slicer.app.processEvents`` to keep the GUI
        painting. On timeout the run is cancelled and :class:`WorkerTimeoutError` raised.
        """
        wait_for_run(self, self.job_name, timeout_s, interval_s, between_polls)

    def _refuse_if_busy(self) -> None:
        if self.busy:
            raise WorkerError(f"a {self.job_name} is already {self.state.value}; wait for it or cancel it")

    def _deliver_progress(self, stage: str, fraction: float, message: str, running: bool = True) -> None:
        if running:
            self.state = RunnerState.RUNNING
        self._call("on_progress", stage, fraction, message)

    def _deliver_done(self, result: Any) -> None:
        """Import the result (``on_done``) in the importing state; a failing import is an error."""
        run = self._run
        self.state = RunnerState.IMPORTING
        try:
            if run.callbacks.on_done:
                run.callbacks.on_done(result)
        except Exception as error:  # the import failed: report it like any other failure
            self._finish_with_error(error)
            return
        self._finish()

    def _call(self, name: str, *args) -> None:
        callback = getattr(self._run.callbacks, name, None) if self._run else None
        if callback:
            callback(*args)

    def _finish(self) -> None:
        self._run, self.state = None, RunnerState.IDLE

    def _finish_with_error(self, error: BaseException) -> None:
        run = self._run
        self._finish()
        if run and run.callbacks.on_error:
            run.callbacks.on_error(error)
        elif run:
            raise error


class BackgroundRunner(RunDelivery):
    """Runs requests (any kind the worker serves) on a (warm) worker and turns its events into callbacks.

    ``job_name`` names the work in messages ("a prediction is already running").
    """

    def __init__(
        self,
        python: str | None = None,
        env: dict[str, str] | None = None,
        warm: bool = True,
        threads: int = 0,
        job_name: str = "segmentation",
    ):
        self.warm = warm
        self.threads = threads
        self.job_name = job_name
        self._python = python
        self._env = env
        self._worker: WorkerProcess | None = None
        self._run: _Run | None = None
        self._ids = itertools.count(1)
        self.state = RunnerState.IDLE

    # ------------------------------------------------------------------ queries
    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker and self._worker.is_alive() else None

    # ------------------------------------------------------------------ commands
    def prestart(self) -> None:
        """Start a warm worker now, idle, so the first request skips the start-up wait.

        The worker imports PyTorch and MONAI in the background meanwhile. Does nothing when a
        worker is already running or the runner is cold (``warm=False``).
        """
        if not self.warm or self.busy or (self._worker is not None and self._worker.is_alive()):
            return
        self._discard_worker()
        worker = WorkerProcess(
            worker_command(self._python, self.threads, import_early=True), worker_environment(self._env, self.threads)
        )
        worker.start()
        self._worker = worker

    def submit(self, request: dict[str, Any], callbacks: RunCallbacks | None = None) -> str:
        """Send a request (starting a worker if none is warm); returns its id at once."""
        self._refuse_if_busy()
        request = dict(request)
        request.setdefault("id", f"run-{next(self._ids)}")
        self._run = _Run(str(request["id"]), callbacks or RunCallbacks())
        if self._worker is not None and not self._worker.is_alive():
            self._discard_worker()
        if self._worker is None:
            self.state = RunnerState.STARTING
            self._worker = WorkerProcess(
                worker_command(self._python, self.threads), worker_environment(self._env, self.threads)
            )
            try:
                self._worker.start()
            except WorkerError:
                self._worker, self._run, self.state = None, None, RunnerState.IDLE
                raise
        else:
            self.state = RunnerState.RUNNING
        try:
            self._worker.send(request)
        except WorkerError:
            error = self._death_error()
            self._finish()  # raised, not also delivered: the caller reports it once, as for a failed start
            raise error from None
        return self._run.request_id

    def poll(self) -> bool:
        """Deliver what the worker said since the last call; returns whether a run is still going."""
        worker = self._worker
        if worker is None:
            return self.busy
        saw_eof = False
        while True:
            try:
                kind, payload = worker.events.get_nowait()
            except queue.Empty:
                break
            if kind == "eof":
                saw_eof = True
            elif kind == "log":
                self._call("on_log", payload)
            else:
                self._on_event(payload)
            if self._worker is not worker:  # the run ended and the worker was let go
                return self.busy
        if self.busy and self.state is not RunnerState.IMPORTING and (saw_eof or not worker.is_alive()):
            worker.wait_for_exit(timeout_s=2.0)
            self._finish_with_error(self._death_error())
        return self.busy

    def cancel(self) -> None:
        """Stop the current run now: end the worker's process tree, drop its events."""
        if not self.busy:
            return
        run = self._run
        self._run, self.state = None, RunnerState.IDLE
        self._discard_worker()
        if run and run.callbacks.on_cancelled:
            run.callbacks.on_cancelled()

    def shutdown(self) -> None:
        """Cancel any run and let the warm worker go (quit, then kill if it lingers)."""
        if self.busy:
            self.cancel()
        if self._worker is not None:
            self._worker.close(timeout_s=3.0)
            self._worker = None

    # ------------------------------------------------------------------ internals
    def _on_event(self, event: dict[str, Any]) -> None:
        run = self._run
        kind = event.get("event")
        if kind == "ready":
            if self.state is RunnerState.STARTING:
                self.state = RunnerState.RUNNING
            return
        if run is None or str(event.get("id")) != run.request_id:
            return  # an answer to a request nobody waits for any more
        run.last_event = event
        if kind == "progress":
            self._deliver_progress(event.get("stage", ""), float(event.get("fraction", 0.0)), event.get("message", ""))
        elif kind == "done":
            self._deliver_done(event)
        elif kind == "error":
            self._finish_with_error(error_from_event(event))

    def _finish(self) -> None:
        super()._finish()
        if not self.warm or (self._worker is not None and not self._worker.is_alive()):
            self._discard_worker(graceful=True)

    def _death_error(self) -> WorkerError:
        worker = self._worker
        code = worker.returncode if worker else None
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"was killed (signal {-code})"
        else:
            how = f"exited with code {code}"
        tail = worker.stderr_tail() if worker else []
        detail = "; its last messages:\n  " + "\n  ".join(tail) if tail else ""
        self._discard_worker()
        return WorkerError(
            f"the background worker {how} before finishing the {self.job_name}; nothing was imported. "
            f"Run it again to start a new worker{detail}"
        )

    def _discard_worker(self, graceful: bool = False) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if graceful:
            worker.close(timeout_s=3.0)
        else:
            worker.kill_tree()


# The runner's name before prognosis became a request kind of the same worker; kept for callers.
SegmentationRunner = BackgroundRunner
