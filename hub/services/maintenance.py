"""Maintenance: expired merge results and garbage-collecting orphan blobs."""
from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import delete, exists, or_, select, update

from hub.db import Database
from hub.models import Merge, MergeFile, VersionFile, utcnow
from hub.services.blobs import lock_blobs
from hub.storage import BlobStore, blob_key


def expire_merges(db: Database, *, dry_run: bool = False) -> list[str]:
    """Let go of the result files of merges past their expiry (their blobs become orphans,
    which gc removes once no other row names them); returns the merges' ids."""
    now = utcnow()
    with db.session() as session:
        ids = list(session.scalars(select(Merge.id).where(
            Merge.expires_at <= now,
            or_(Merge.archive_sha256.is_not(None),
                exists().where(MergeFile.merge_id == Merge.id)))))
        if ids and not dry_run:
            session.execute(delete(MergeFile).where(MergeFile.merge_id.in_(ids)))
            session.execute(update(Merge).where(Merge.id.in_(ids))
                            .values(archive_sha256=None, archive_size=None)
                            .execution_options(synchronize_session=False))
    return ids


def _named(session, key: str) -> bool:
    """Whether a version file, a merge result or a merge archive names the blob `key`."""
    digest = key.rsplit("/", 1)[-1]
    return bool(session.scalar(select(or_(
        exists().where(VersionFile.blob_key == key),
        exists().where(MergeFile.blob_key == key),
        exists().where(Merge.archive_sha256 == digest)))))


def collect_garbage(db: Database, store: BlobStore, *, grace_hours: float = 24.0,
                    dry_run: bool = False) -> list[str]:
    """Delete blobs no row names that are older than the grace period; return their keys."""
    # The grace period spares a publish whose blob is written but whose row is not yet
    # committed (a young blob; a dedup hit on the local store refreshes it too) from
    # storing it twice; the lock below is what keeps its bytes.
    cutoff = utcnow() - timedelta(hours=grace_hours)
    pace = not dry_run and db.engine.dialect.name == "sqlite"
    with db.session() as session:
        named = set(session.scalars(select(VersionFile.blob_key).distinct()))
        named |= set(session.scalars(select(MergeFile.blob_key).distinct()))
        named |= {blob_key(digest) for digest in session.scalars(
            select(Merge.archive_sha256).where(Merge.archive_sha256.is_not(None)).distinct())}
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
            if _named(session, key):
                continue
            if not dry_run:
                store.delete(key)
        removed.append(key)
        if pace:
            # SQLite's one write lock: leave other writers as long again as this key took
            # (at most 1 s) to get in, or they sleep through every gap between two keys and
            # time out (30 s).
            time.sleep(min(time.monotonic() - locked, 1.0))
    return removed
