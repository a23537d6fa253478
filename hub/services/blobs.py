"""Blob locks: publish and `lorastack gc` never interleave on one blob.

Blobs are content-addressed, so a publish whose bytes are already stored (an old orphan,
say) skips the upload, while gc may be deleting that very blob because no row names it
yet. Each side therefore takes the blob's lock in its transaction: gc around its last
"does a row name it?" check and the delete, publish around its last "is it stored?" check
and the insert of the rows that name it (when gc won, publish lets go, stores the blob
again and looks again). Whichever comes second waits for the other's commit and then sees
what it did.

The lock is a row of `blob_locks` inserted and deleted again in the same transaction:
nothing is ever kept, and a second insert of the same key waits for the first transaction
to end, then goes ahead (PostgreSQL: "if it commits without deleting the conflicting row
again, there is a uniqueness violation", so here there is none; SQLite: the insert takes
the database's write lock, which is held to the commit). Two things this rests on: on
PostgreSQL, READ COMMITTED (hub.db pins it), so that gc's check after waiting sees the
publish's rows; on SQLite, pysqlite's implicit BEGIN right before the first write, so that
the lock's insert starts the transaction and waits (busy_timeout) rather than failing with
SQLITE_BUSY_SNAPSHOT on a read snapshot taken earlier.
"""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from hub.models import BlobLock


def lock_blobs(session: Session, keys: Iterable[str]) -> None:
    """Hold the locks of `keys` until `session`'s transaction ends (in key order: no deadlock)."""
    for key in sorted(set(keys)):
        session.execute(insert(BlobLock).values(key=key))
        session.execute(delete(BlobLock).where(BlobLock.key == key))
