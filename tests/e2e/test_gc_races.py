"""`lorastack gc` against a publish of the same bytes: whichever way they interleave, the
version's blob stays stored (hub.services.blobs)."""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from sqlalchemy import delete, func, select, text

from hub.models import Adapter, BlobLock
from hub.services.blobs import lock_blobs
from hub.services.maintenance import collect_garbage
from hub.storage import blob_key
from tests.e2e.helpers import publish


def _orphaned(hub, client, token: str, lora_dir: Path) -> str:
    """Publish `lora_dir`, then drop every row: its blobs are orphans. The weights' key."""
    assert publish(client, token, "alice/first", "1", lora_dir).status_code == 201
    with hub.db.session() as session:
        session.execute(delete(Adapter))
    digest = hashlib.sha256((lora_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
    return blob_key(digest)


def _stored(hub, key: str) -> bytes:
    with hub.store.open_read(key) as handle:
        return handle.read()


def test_a_blob_lock_waits_for_the_transaction_that_holds_it(app, settings):
    db = app.extensions["lorastack"].db
    order: list[str] = []
    holding = threading.Event()

    def second() -> None:
        holding.wait()
        with db.session() as session:
            lock_blobs(session, ["sha256/aa/bb/x"])
            order.append("second locked")

    thread = threading.Thread(target=second)
    thread.start()
    with db.session() as session:
        lock_blobs(session, ["sha256/aa/bb/x", "sha256/aa/bb/y"])
        holding.set()
        thread.join(timeout=1.0)  # it cannot finish while we hold the lock
        order.append("first commits")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert order == ["first commits", "second locked"]
    if settings.database_url.startswith("postgresql"):
        # Row locks: another key is free meanwhile (SQLite has one write lock for all).
        with db.session() as session:
            lock_blobs(session, ["sha256/aa/bb/x"])
            with db.session() as other:
                other.execute(text("SET LOCAL lock_timeout = '10s'"))  # fail, not hang
                lock_blobs(other, ["sha256/aa/bb/z"])
    with db.session() as session:  # nothing is kept
        assert session.scalar(select(func.count()).select_from(BlobLock)) == 0


def test_publish_stores_again_a_blob_gc_deleted_after_its_dedup_check(app, client, make_user,
                                                                      lora_dir, monkeypatch):
    hub = app.extensions["lorastack"]
    token = make_user("alice")
    key = _orphaned(hub, client, token, lora_dir)
    put_file = hub.store.put_file
    swept: list[str] = []

    def put_then_gc(k, path, **kwargs):
        put_file(k, path, **kwargs)  # an old orphan with these bytes: no upload
        if k == key and not swept:
            swept.extend(collect_garbage(hub.db, hub.store, grace_hours=0))

    monkeypatch.setattr(hub.store, "put_file", put_then_gc)
    assert publish(client, token, "alice/second", "1", lora_dir).status_code == 201
    assert key in swept  # gc did delete it between the dedup check and the rows
    assert _stored(hub, key) == (lora_dir / "adapter_model.safetensors").read_bytes()


def test_a_publish_waits_for_the_gc_that_is_deleting_its_blob(app, client, make_user,
                                                              lora_dir):
    hub = app.extensions["lorastack"]
    token = make_user("alice")
    key = _orphaned(hub, client, token, lora_dir)
    statuses: list[int] = []

    class PublishWhileDeleting:
        """gc's store: before deleting the weights' blob, a publish of the same bytes starts
        and gets a second to finish (it used to commit its rows, and lose its blob)."""

        def iter_blobs(self):
            return hub.store.iter_blobs()

        def delete(self, k):
            if k == key:
                self.thread = threading.Thread(target=lambda: statuses.append(
                    publish(client, token, "alice/second", "1", lora_dir).status_code))
                self.thread.start()
                self.thread.join(timeout=1.0)
            hub.store.delete(k)

    store = PublishWhileDeleting()
    removed = collect_garbage(hub.db, store, grace_hours=0)
    store.thread.join(timeout=60)
    assert key in removed and statuses == [201]
    assert _stored(hub, key) == (lora_dir / "adapter_model.safetensors").read_bytes()
    download = client.get("/api/v1/adapters/alice/second/versions/1/files/adapter_model.safetensors")
    assert download.status_code in (200, 302)


def test_gc_waiting_on_a_publish_sees_its_rows_and_spares_the_blob(app, client, make_user,
                                                                   lora_dir, monkeypatch):
    hub = app.extensions["lorastack"]
    token = make_user("alice")
    key = _orphaned(hub, client, token, lora_dir)
    if hub.db.engine.dialect.name == "postgresql":
        # A server whose default is REPEATABLE READ: gc's check would read a snapshot taken
        # before it waited, miss the publish's rows and delete the blob, unless the engine
        # pins READ COMMITTED.
        with hub.db.session() as session:
            session.execute(text("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET "
                                 "default_transaction_isolation = ''repeatable read''', "
                                 "current_database()); END $$"))
        hub.db.engine.dispose()
    size = hub.store.size
    calls: list[str] = []
    gc: dict = {}

    def size_and_gc_under_the_lock(k):
        answer = size(k)
        calls.append(k)
        if k == key and calls.count(key) == 2:  # put_file's check, then the locked one
            gc["thread"] = threading.Thread(target=lambda: gc.setdefault(
                "removed", collect_garbage(hub.db, hub.store, grace_hours=0)))
            gc["thread"].start()
            gc["thread"].join(timeout=1.0)  # it waits for our commit
        return answer

    monkeypatch.setattr(hub.store, "size", size_and_gc_under_the_lock)
    assert publish(client, token, "alice/second", "1", lora_dir).status_code == 201
    gc["thread"].join(timeout=60)
    assert not gc["thread"].is_alive()
    assert key not in gc["removed"]
    assert _stored(hub, key) == (lora_dir / "adapter_model.safetensors").read_bytes()


def test_a_publish_stores_a_blob_gc_took_again_without_holding_its_lock(app, settings, client,
                                                                         make_user, lora_dir,
                                                                         monkeypatch):
    # Re-uploading can take minutes on S3: meanwhile gc and other publishes sharing the blob
    # (on SQLite: every writer) must not wait on the publish's lock.
    from hub.db import Database

    hub = app.extensions["lorastack"]
    token = make_user("alice")
    key = _orphaned(hub, client, token, lora_dir)
    put_file = hub.store.put_file
    calls: list[str] = []
    probe: dict = {}

    def lock_meanwhile() -> None:
        other = Database(settings.database_url)
        try:
            with other.session() as session:
                if other.engine.dialect.name == "sqlite":
                    session.execute(text("PRAGMA busy_timeout = 3000"))
                else:
                    session.execute(text("SET LOCAL lock_timeout = '3s'"))
                lock_blobs(session, [key])
            probe["locked"] = True
        except Exception as exc:  # a lock or busy timeout
            probe["locked"] = exc
        finally:
            other.dispose()

    def gc_then_probe(k, path, **kwargs):
        calls.append(k)
        if k == key and calls.count(key) == 2:  # storing it again: is its lock free?
            thread = threading.Thread(target=lock_meanwhile)
            thread.start()
            thread.join(timeout=30)
        put_file(k, path, **kwargs)
        if k == key and calls.count(key) == 1:  # a dedup hit on the old orphan
            collect_garbage(hub.db, hub.store, grace_hours=0)

    monkeypatch.setattr(hub.store, "put_file", gc_then_probe)
    assert publish(client, token, "alice/second", "1", lora_dir).status_code == 201
    assert calls.count(key) == 2 and probe["locked"] is True
    assert _stored(hub, key) == (lora_dir / "adapter_model.safetensors").read_bytes()


def test_a_publish_whose_blobs_keep_vanishing_gives_up_with_a_clear_503(app, client, make_user,
                                                                       lora_dir, monkeypatch):
    from tests.e2e.helpers import assert_problem

    hub = app.extensions["lorastack"]
    token = make_user("alice")
    put_file = hub.store.put_file

    def put_then_lose(k, path, **kwargs):
        put_file(k, path, **kwargs)
        hub.store.delete(k)  # a gc with no grace period, every time

    monkeypatch.setattr(hub.store, "put_file", put_then_lose)
    body = assert_problem(publish(client, token, "alice/gone", "1", lora_dir), 503,
                          "storage_unavailable")
    assert "send them again" in body["detail"]
    monkeypatch.undo()
    assert client.get("/api/v1/adapters/alice/gone").status_code == 404  # nothing half-written
