"""Maintenance: garbage-collecting orphan blobs."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.models import VersionFile, utcnow
from hub.storage import BlobStore


def collect_garbage(session: Session, store: BlobStore, *, grace_hours: float = 24.0,
                    dry_run: bool = False) -> list[str]:
    """Delete blobs no row names that are older than the grace period; return their keys."""
    # The grace period covers a publish whose blob is written but whose row is not yet
    # committed: such a blob is young, so it is never taken.
    cutoff = utcnow() - timedelta(hours=grace_hours)
    named = set(session.scalars(select(VersionFile.blob_key).distinct()))
    removed = []
    for key, modified in store.iter_blobs():
        if key in named or modified > cutoff:
            continue
        if not dry_run:
            store.delete(key)
        removed.append(key)
    return removed
