"""The blob store interface and the content address of a blob."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterator

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A key is a relative POSIX path whose parts start with a letter or digit: no "..", no
# leading "/", no backslash, so a key can never leave the store's root or prefix.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")


def blob_key(sha256_hex: str) -> str:
    """The content address of a blob: `sha256/ab/cd/<full hex digest>`."""
    if not isinstance(sha256_hex, str) or not _SHA256_HEX.fullmatch(sha256_hex):
        raise ValueError(f"not a sha256 digest (64 lowercase hex characters): {sha256_hex!r}")
    return f"sha256/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise ValueError."""
    if not isinstance(key, str) or len(key) > 1024 or not _KEY.fullmatch(key):
        raise ValueError(f"invalid blob key: {key!r}")
    return key


def check_source(path: Path, size: int) -> None:
    """Refuse a source file that is missing or whose size is not `size` (a caller bug)."""
    actual = Path(path).stat().st_size  # FileNotFoundError for a missing source
    if actual != size:
        raise ValueError(f"{path} has {actual} bytes, the caller said {size}")


@dataclass(frozen=True)
class S3Timeouts:
    """How long one S3 request may wait to connect and between two reads (seconds), and
    how many times it is tried in all: a store that hangs fails a request within about
    `max_attempts * (connect + read)` seconds."""

    connect: float = 5.0
    read: float = 10.0
    max_attempts: int = 2


class BlobStore(ABC):
    """A flat store of immutable blobs addressed by key (see `blob_key`).

    Every failure of the backend surfaces as `hub.errors.StorageUnavailable`, a missing
    blob on read as `hub.errors.NotFound`; no vendor exception leaves an implementation.
    """

    @abstractmethod
    def put_file(self, key: str, path: Path, *, size: int, sha256: str,
                 consume: bool = False) -> None:
        """Store the file at `path` under `key`; a no-op when the blob already exists.

        `consume=True` says the caller will never write to `path` again (an upload's
        temporary file), so a store may take the file over instead of copying it.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The size in bytes of the blob under `key`, or None when there is none."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A streaming binary file object over the blob; close it when done."""

    def local_path(self, key: str) -> Path | None:
        """The blob's path on this machine, or None when the store is not local."""
        return None

    def presigned_url(self, key: str, *, filename: str, expires_in: int,
                      cache_control: str | None = None) -> str | None:
        """A short-lived download URL that names `filename` and is served with `cache_control`,
        or None when the store cannot sign URLs (the hub then streams the bytes itself)."""
        return None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob under `key`; a missing blob is not an error."""

    @abstractmethod
    def iter_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every stored key with its last-modified time (UTC), for garbage collection."""

    def remove_incomplete_uploads(self, before: datetime, *,
                                  dry_run: bool = False) -> list[str]:
        """Discard what writes begun before `before` left unfinished (a crashed process's
        partial files or multipart uploads); return a description of each."""
        return []

    @abstractmethod
    def check(self) -> None:
        """Raise StorageUnavailable with a useful detail unless the store is usable."""
