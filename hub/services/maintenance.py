"""Maintenance: expired merge results, orphan blobs, and what crashed processes left."""
from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, exists, or_, select, update

from hub.db import Database
from hub.models import Merge, MergeFile, VersionFile, utcnow
from hub.services.blobs import lock_blobs
from hub.storage import BlobStore, blob_key


def _live(now: datetime):
    """A merge whose result is still served: unexpired, or never expiring (published)."""
    return or_(Merge.expires_at.is_(None), Merge.expires_at > now)


def expire_merges(db: Database, *, dry_run: bool = False) -> list[str]:
    """Let go of the result files of merges past their expiry (their blobs become orphans,
    which gc removes once no other row names them); returns the merges' ids."""
    now = utcnow()
    holds_result = or_(Merge.archive_sha256.is_not(None),
                       exists().where(MergeFile.merge_id == Merge.id))
    with db.session() as session:
        if dry_run:
            return list(session.scalars(select(Merge.id).where(~_live(now), holds_result)))
        # One conditional UPDATE, not a list read earlier: a publish that cleared the
        # expiry meanwhile keeps its files (PostgreSQL re-checks the row after its lock).
        ids = list(session.scalars(
            update(Merge).where(~_live(now), holds_result)
            .values(archive_sha256=None, archive_size=None).returning(Merge.id)
            .execution_options(synchronize_session=False)))
        if ids:
            session.execute(delete(MergeFile).where(MergeFile.merge_id.in_(ids)))
    return ids


def _named(session, key: str, now: datetime) -> bool:
    """Whether a version file, or a live merge's result file or archive, names `key`."""
    digest = key.rsplit("/", 1)[-1]
    return bool(session.scalar(select(or_(
        exists().where(VersionFile.blob_key == key),
        select(MergeFile.id).join(Merge, MergeFile.merge_id == Merge.id)
        .where(MergeFile.blob_key == key, _live(now)).exists(),
        exists().where(Merge.archive_sha256 == digest, _live(now))))))


def collect_garbage(db: Database, store: BlobStore, *, grace_hours: float = 24.0,
                    dry_run: bool = False) -> list[str]:
    """Delete blobs no row names that are older than the grace period; return their keys."""
    # The grace period spares a publish whose blob is written but whose row is not yet
    # committed (a young blob; a dedup hit on the local store refreshes it too) from
    # storing it twice; the lock below is what keeps its bytes.
    now = utcnow()
    cutoff = now - timedelta(hours=grace_hours)
    pace = not dry_run and db.engine.dialect.name == "sqlite"
    # An expired merge names nothing, whether or not expire_merges has dropped its rows
    # yet: a dry run then lists what the real run removes.
    with db.session() as session:
        named = set(session.scalars(select(VersionFile.blob_key).distinct()))
        named |= set(session.scalars(
            select(MergeFile.blob_key).join(Merge, MergeFile.merge_id == Merge.id)
            .where(_live(now)).distinct()))
        named |= {blob_key(digest) for digest in session.scalars(
            select(Merge.archive_sha256).where(Merge.archive_sha256.is_not(None), _live(now))
            .distinct())}
    removed = []
    for key, modified in store.iter_blobs():
        if key in named or modified > cutoff:
            continue
        # Ask again right before deleting, under the blob's lock (hub.services.blobs): a
        # publish may have committed a row naming it since the list above was read, and
        # one naming it from now on waits for this transaction, then finds it gone and
        # stores it again.
        locked = time.monotonic()
        with db.session() as session:
            if not dry_run:
                lock_blobs(session, [key])
            if _named(session, key, now):
                continue
            if not dry_run:
                store.delete(key)
        removed.append(key)
        if pace:
            # SQLite's one write lock: leave other writers as long again as this key took
            # (at most 1 s) to get in, or they sleep through every gap between two keys and
            # time out (30 s).
            time.sleep(min(time.monotonic() - locked, 1.0))
    if not dry_run:
        # gc is the hub's periodic chore, and the catalog's statistics drift as it grows.
        db.optimize()
    return removed


# What the hub writes under DATA_DIR/tmp: an upload's temporary file, and the work folders
# of a merge, a merge's publish and a merge plan's analysis. Each is removed by the process
# that made it, unless that process died first.
_WORK_PREFIXES = ("upload-", "merge-", "publish-", "analyze-")
# A source being fetched into the worker cache (DATA_DIR/cache/sources/ab/.fetch-*).
_FETCH_PREFIX = ".fetch-"


def remove_stale_work_files(data_dir: Path, before: datetime, *,
                            dry_run: bool = False) -> list[Path]:
    """Remove temporary files and work folders under `data_dir` untouched since `before`
    (a process killed midway left them); return their paths.

    A live upload, fetch or merge keeps writing, so its newest time stays recent.
    """
    data_dir = Path(data_dir)
    candidates = [path for path in _children(data_dir / "tmp")
                  if path.name.startswith(_WORK_PREFIXES)]
    candidates += [path for folder in _children(data_dir / "cache" / "sources")
                   for path in _children(folder) if path.name.startswith(_FETCH_PREFIX)]
    cutoff = before.timestamp()
    removed = []
    for path in candidates:
        newest = _newest_mtime(path)
        if newest is None or newest >= cutoff:
            continue
        if not dry_run:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _newest_mtime(path: Path) -> float | None:
    """The latest modification time of `path` and, for a folder, of anything in it."""
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return None
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest
