"""Maintenance: garbage-collecting orphan blobs."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, select

from hub.db import Database
from hub.models import VersionFile, utcnow
from hub.storage import BlobStore


def collect_garbage(db: Database, store: BlobStore, *, grace_hours: float = 24.0,
                    dry_run: bool = False) -> list[str]:
    """Delete blobs no row names that are older than the grace period; return their keys."""
    # The grace period covers a publish whose blob is written but whose row is not yet
    # committed: such a blob is young (a dedup hit refreshes it too), so it is not taken.
    cutoff = utcnow() - timedelta(hours=grace_hours)
    with db.session() as session:
        named = set(session.scalars(select(VersionFile.blob_key).distinct()))
    removed = []
    for key, modified in store.iter_blobs():
        if key in named or modified > cutoff:
            continue
        # Ask again in a fresh transaction right before deleting: a publish may have
        # committed a row naming this blob since the list above was read.
        with db.session() as session:
            if session.scalar(select(exists().where(VersionFile.blob_key == key))):
                continue
        if not dry_run:
            store.delete(key)
        removed.append(key)
    return removed
