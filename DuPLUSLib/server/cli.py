"""``duplus serve``: check the settings, load the model, listen.

    duplus serve                                           this computer only (127.0.0.1:8000)
    duplus serve --host 0.0.0.0 --api-key-file key.txt --device cuda
    duplus serve --host 0.0.0.0 --api-key-file key.txt --ssl-certfile cert.pem --ssl-keyfile key.pem

Every setting is checked before PyTorch is imported, so a refused start is immediate. The model is
loaded before the server listens: the first request finds it warm. The line
``duplus serve: listening on URL ...`` on stdout says the server is ready.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DuPLUSError, MissingDependencyError

__all__ = ["ServerSettingsError", "read_api_key", "register", "is_local_host"]

MIN_KEY_LENGTH = 16
log = logging.getLogger("duplus.serve")


class ServerSettingsError(DuPLUSError, ValueError):
    """A ``duplus serve`` setting that would make the server unsafe or unable to start."""


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve segmentation (and prognosis) over HTTP, for Slicer clients on other computers",
        description="Run the DuPLUS server. It listens on this computer only unless --host says otherwise; "
                    "any other host needs --api-key-file.",
    )
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0: every network)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    serve.add_argument("--api-key-file", help="file holding the API key clients must send (required off localhost)")
    serve.add_argument("--model", help="model folder (default: the bundled model); fixed for the server's life")
    serve.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    serve.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    serve.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest upload accepted, MiB (default 2048)")
    serve.add_argument("--max-voxels", type=float, default=1000.0,
                       help="largest volume accepted, millions of voxels (default 1000)")
    serve.add_argument("--max-queue", type=int, default=16, help="jobs that may wait at once (default 16)")
    serve.add_argument("--keep-results-min", type=float, default=30.0,
                       help="minutes a result waits for its client before it is removed "
                            "(default 30, at least 1)")
    serve.add_argument("--work-dir", help="folder for uploads and results (default: the system's temporary folder)")
    serve.add_argument("--prognosis-model", help="prognosis model folder (default: the bundled EHR model)")
    serve.add_argument("--ssl-certfile", help="TLS certificate (PEM): serve https directly")
    serve.add_argument("--ssl-keyfile", help="TLS private key (PEM) of --ssl-certfile")
    serve.set_defaults(run=run)


@dataclass
class _Checked:
    host: str
    port: int
    api_key: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None


def is_local_host(host: str) -> bool:
    """Whether ``host`` is reachable from this computer only (a loopback address or 'localhost')."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network address


def read_api_key(path: str | os.PathLike[str], who: str = "--api-key-file") -> str:
    """The key in ``path`` (one line, surrounding white space ignored), refused when missing or weak."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ServerSettingsError(f"{who} '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ServerSettingsError(f"cannot read {who} '{path}': {error}") from None
    key = text.strip()
    if not key:
        raise ServerSettingsError(f"{who} '{path}' is empty; put the API key in it")
    if "\n" in key:
        raise ServerSettingsError(f"{who} '{path}' holds more than one line; it must hold only the key")
    if len(key) < MIN_KEY_LENGTH:
        raise ServerSettingsError(
            f"the API key in '{path}' has {len(key)} characters; use at least {MIN_KEY_LENGTH}, e.g. "
            "python -c \"import secrets; print(secrets.token_urlsafe(32))\" > key.txt"
        )
    return key


def check_settings(args: argparse.Namespace) -> _Checked:
    """Refuse unsafe or impossible settings, naming the fix, before anything is loaded."""
    api_key = read_api_key(args.api_key_file) if args.api_key_file else None
    if api_key is not None and os.name == "posix":
        mode = os.stat(args.api_key_file).st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("the API key file '%s' is readable by other users; chmod 600 it", args.api_key_file)
    if not is_local_host(args.host) and api_key is None:
        raise ServerSettingsError(
            f"refusing to listen on '{args.host}' without an API key: anyone on that network could send scans "
            "and read results. Give --api-key-file FILE (a random key of 16 or more characters), or listen on "
            "127.0.0.1 and reach it through an SSH tunnel or a reverse proxy"
        )
    if not 0 <= args.port <= 65535:
        raise ServerSettingsError(f"--port {args.port} is not a port number (0-65535)")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ServerSettingsError("give both --ssl-certfile and --ssl-keyfile, or neither")
    for option, value in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile),
                          ("--prognosis-model", args.prognosis_model)):
        if value and not Path(value).exists():
            raise ServerSettingsError(f"{option} '{value}' does not exist")
    if args.model and not Path(args.model).is_dir():
        raise ServerSettingsError(f"--model '{args.model}' is not a folder; give a DuPLUS model folder")
    for option, value in (("--max-upload-mb", args.max_upload_mb), ("--max-voxels", args.max_voxels),
                          ("--max-queue", args.max_queue)):
        if value <= 0:
            raise ServerSettingsError(f"{option} must be positive, not {value}")
    if not args.keep_results_min >= 1:  # also refuses nan
        raise ServerSettingsError(
            f"--keep-results-min must be at least 1, not {args.keep_results_min}: it is how long a finished result "
            "waits for its client to download it, and below a minute it can be removed before the client asks"
        )
    return _Checked(args.host, args.port, api_key, args.ssl_certfile, args.ssl_keyfile)


def _check_server_packages() -> None:
    """The server's packages are an extra that a client install leaves out: say so, not a traceback."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(f"duplus serve needs '{error.name or error}', which is not installed; install "
                                     "the server extra: pip install -e '.[server]'") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check_server_packages()
    checked = check_settings(args)
    listener = _bind(checked.host, checked.port)  # a port in use fails now, before the model loads

    import uvicorn

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from .app import ServerSettings, create_app
    from .jobs import JobQueue

    queue = JobQueue(args.work_dir, args.model, args.device, keep_results_s=60 * args.keep_results_min,
                     max_queue=args.max_queue)
    try:
        segmenter = queue.load_model()
        queue.start()
        settings = ServerSettings(api_key=checked.api_key, max_upload_bytes=int(args.max_upload_mb * 2**20),
                                  max_voxels=int(args.max_voxels * 1e6), prognosis_model=args.prognosis_model)
        app = create_app(queue, settings)
        config = uvicorn.Config(app, log_config=None, access_log=False, ssl_certfile=checked.ssl_certfile,
                                ssl_keyfile=checked.ssl_keyfile, timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        host, port = listener.getsockname()[:2]
        scheme = "https" if checked.ssl_certfile else "http"
        shown = f"[{host}]" if ":" in host else host
        print(f"duplus serve: listening on {scheme}://{shown}:{port} (model '{segmenter.bundle.config.name}' on "
              f"{segmenter.device}; API key {'required' if checked.api_key else 'not required'})", flush=True)
        if not checked.ssl_certfile and not is_local_host(checked.host):
            log.warning("serving plain http on a network: put a TLS reverse proxy in front, or give --ssl-certfile")
        _exit_cleanly_on_sigterm()
        server.run(sockets=[listener])
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        queue.stop()
        listener.close()
    return 0


def _exit_cleanly_on_sigterm() -> None:
    """uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it found:
    make that handler end the process through ``finally`` blocks, so the work folder is removed."""

    def stop(signum, frame):  # noqa: ARG001
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def _bind(host: str, port: int) -> socket.socket:
    if host.lower() == "localhost":
        host = "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host.strip("[]"), port))
    except OSError as error:
        listener.close()
        raise ServerSettingsError(f"cannot listen on {host}:{port}: {error.strerror or error}; "
                                  "choose another --port or --host") from None
    listener.listen(128)
    listener.set_inheritable(True)
    return listener
