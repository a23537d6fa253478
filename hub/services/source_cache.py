"""A worker's copies of source files, fetched from the blob store and keyed by sha256.

From a store with local paths (the embedded default) nothing is copied: the merge reads
the blobs where they are. From S3 each blob is downloaded once into the cache folder,
verified against its digest, and kept while the cache stays within its byte budget
(least recently used first out). A merge sees each source as a folder of links named as
PEFT names the files.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hub.errors import StorageUnavailable
from hub.formats import CONFIG_FILE, WEIGHTS_FILE
from hub.storage import BlobStore

CHUNK = 4 << 20
#: What the engine reads of a source: PEFT's config and weights.
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)


@dataclass(frozen=True)
class CachedFile:
    """A file a merge needs: its name in the adapter folder and its blob."""

    path: str
    blob_key: str
    sha256: str
    size: int


class SourceCache:
    """Blobs on local disk for merges, within `budget_bytes` (files in use are kept)."""

    def __init__(self, store: BlobStore, root: Path, budget_bytes: int) -> None:
        self.store = store
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._in_use: dict[str, int] = {}

    @contextmanager
    def folders(self, sources: list[list[CachedFile]], work: Path) -> Iterator[list[Path]]:
        """One folder per source under `work` (source-0, source-1, ...), for the block."""
        with ExitStack() as stack:
            yield [stack.enter_context(self.folder(files, work / f"source-{index}"))
                   for index, files in enumerate(sources)]

    @contextmanager
    def folder(self, files: list[CachedFile], where: Path) -> Iterator[Path]:
        """`where` holding links to the files' local copies, for the block's duration."""
        where.mkdir(parents=True, exist_ok=False)
        pinned = [file.sha256 for file in files]
        with self._lock:
            for digest in pinned:
                self._in_use[digest] = self._in_use.get(digest, 0) + 1
        try:
            for file in files:
                self._place(file, where / file.path)
            self._evict()
            yield where
        finally:
            with self._lock:
                for digest in pinned:
                    self._in_use[digest] -= 1
                    if not self._in_use[digest]:
                        del self._in_use[digest]
            shutil.rmtree(where, ignore_errors=True)

    def _place(self, file: CachedFile, target: Path) -> None:
        local = self.store.local_path(file.blob_key)
        if local is not None:
            os.symlink(local, target)
            return
        # A hard link, not a symbolic one: another process's eviction then only drops the
        # cache's name, and this merge keeps its bytes until it is done.
        os.link(self._fetch(file), target)

    def _fetch(self, file: CachedFile) -> Path:
        target = self.root / file.sha256[:2] / file.sha256
        if target.exists() and target.stat().st_size == file.size:
            os.utime(target)  # most recently used
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, partial = tempfile.mkstemp(prefix=".fetch-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.store.open_read(file.blob_key) as source:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != file.sha256:
                raise StorageUnavailable(f"blob {file.blob_key} came back from the store with"
                                         f" sha256 {digest.hexdigest()}: the store's copy is"
                                         " damaged")
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return target

    def _evict(self) -> None:
        """Remove least recently used copies (not in use) until the cache fits its budget."""
        if not self.root.exists():
            return
        entries = []
        for path in self.root.glob("*/*"):
            if path.name.startswith(".fetch-"):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # another worker evicted it
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        with self._lock:
            in_use = set(self._in_use)
        for _, size, path in sorted(entries):
            if total <= self.budget_bytes:
                break
            if path.name in in_use:
                continue
            path.unlink(missing_ok=True)
            total -= size
