"""The local blob store (`file:///abs/path`): one file per blob under a root folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from hub.errors import NotFound, StorageUnavailable
from hub.storage.base import BlobStore, check_key, check_source

# Temporary files live beside their final name (os.replace is only atomic within one
# file system) and carry this prefix so iter_blobs can skip them.
_TMP_PREFIX = ".tmp-"


class LocalBlobStore(BlobStore):
    """Blobs as files under `root`; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_absolute():
            raise ValueError(f"the local store needs an absolute path, got {root}")

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, path: Path, *, size: int, sha256: str,
                 consume: bool = False) -> None:
        """Copy (or, with `consume`, hard-link) `path` under `key` atomically; a no-op when
        a blob of that size exists."""
        target = self._path(key)
        check_source(path, size)
        if self.size(key) == size:
            # Content-addressed: same key and size means the same bytes. Refresh the time
            # so `lorastack gc` sees a blob that a publish is about to name as young.
            try:
                os.utime(target)
                return
            except FileNotFoundError:
                pass  # gc took it meanwhile: store it again
        tmp: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
            os.close(fd)
            if not (consume and _link_over(path, tmp)):
                # copyfile uses sendfile on Linux: no bytes pass through Python.
                shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(target.parent)
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) == Path(path):
                raise  # the source vanished: a caller bug, not a storage failure
            raise StorageUnavailable(f"could not write blob {key} under {self.root}: {exc}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"could not write blob {key} under {self.root}: "
                                     f"{exc.strerror or exc}") from exc
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """The blob's size in bytes, or None when there is none."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"could not read blob {key} under {self.root}: "
                                     f"{exc.strerror or exc}") from exc

    def open_read(self, key: str) -> BinaryIO:
        """The blob opened for binary reading."""
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is not in the store") from exc
        except OSError as exc:
            raise StorageUnavailable(f"could not read blob {key} under {self.root}: "
                                     f"{exc.strerror or exc}") from exc

    def local_path(self, key: str) -> Path | None:
        """The blob's file, so the web layer can serve it with Range support."""
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"blob {key} is not in the store")
        return path

    def delete(self, key: str) -> None:
        """Remove the blob; a missing one is fine."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"could not delete blob {key} under {self.root}: "
                                     f"{exc.strerror or exc}") from exc

    def iter_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every blob key with its modification time (UTC); temp files are skipped."""
        if not self.root.is_dir():
            return
        try:
            for dirpath, _dirnames, filenames in os.walk(self.root):
                for name in filenames:
                    if name.startswith(_TMP_PREFIX):
                        continue
                    full = Path(dirpath) / name
                    try:
                        mtime = full.stat().st_mtime
                    except FileNotFoundError:
                        continue  # deleted while we walked
                    key = full.relative_to(self.root).as_posix()
                    yield key, datetime.fromtimestamp(mtime, tz=timezone.utc)
        except OSError as exc:
            raise StorageUnavailable(f"could not list {self.root}: {exc.strerror or exc}") from exc

    def remove_incomplete_uploads(self, before: datetime, *,
                                  dry_run: bool = False) -> list[str]:
        """Remove temporary files older than `before` (a put that crashed midway); a put
        in progress keeps writing to its file, so its time stays recent."""
        if not self.root.is_dir():
            return []
        removed = []
        cutoff = before.timestamp()
        try:
            for dirpath, _dirnames, filenames in os.walk(self.root):
                for name in filenames:
                    full = Path(dirpath) / name
                    if not name.startswith(_TMP_PREFIX) or not _older(full, cutoff):
                        continue
                    if not dry_run:
                        full.unlink(missing_ok=True)
                    removed.append(full.relative_to(self.root).as_posix())
        except OSError as exc:
            raise StorageUnavailable(f"could not clean {self.root}: {exc.strerror or exc}") from exc
        return removed

    def check(self) -> None:
        """Create the root if needed and prove it is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=_TMP_PREFIX + "check-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageUnavailable(f"blob folder {self.root} is not writable: "
                                     f"{exc.strerror or exc}") from exc


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:  # its put finished (or failed) meanwhile
        return False


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_over(source: Path, target: str) -> bool:
    """Replace `target` by a hard link to `source`; False where linking is impossible.

    An upload's temporary file lives under DATA_DIR, usually on the blob folder's file
    system: linking saves writing a multi-GB file a second time.
    """
    side = f"{target}.link"
    try:
        os.link(source, side)
    except OSError:  # another file system, or links not supported
        return False
    os.replace(side, target)
    return True
