"""Maintenance: garbage-collecting orphan blobs."""
from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import exists, select

from hub.db import Database
from hub.models import VersionFile, utcnow
from hub.services.blobs import lock_blobs
from hub.storage import BlobStore


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
            if session.scalar(select(exists().where(VersionFile.blob_key == key))):
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
