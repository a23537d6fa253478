"""A slow or hung blob store: publishes hold no database connection while they upload,
and a store that never answers costs seconds, not minutes, while database reads go on."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from sqlalchemy import event, text

from tests.e2e.helpers import assert_problem, publish
from tests.support.hung_server import hung_endpoint


class _ConnectionsByThread:
    """Which threads hold a connection of `engine`'s pool right now (pool events)."""

    def __init__(self, engine) -> None:
        self._holders: dict[int, int] = {}
        self._lock = threading.Lock()
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    def _checkout(self, dbapi_connection, record, proxy) -> None:
        with self._lock:
            self._holders[id(record)] = threading.get_ident()

    def _checkin(self, dbapi_connection, record) -> None:
        with self._lock:
            self._holders.pop(id(record), None)

    def held_by_current_thread(self) -> int:
        with self._lock:
            return sum(1 for ident in self._holders.values() if ident == threading.get_ident())


class _WatchedStore:
    """The app's store; each put_file first records what the database holds meanwhile."""

    def __init__(self, inner, connections: _ConnectionsByThread, database_url: str) -> None:
        self._inner = inner
        self._connections = connections
        self._database_url = database_url
        self.seen: list[tuple[int, int]] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put_file(self, key, path, **kwargs):
        started = datetime.now(timezone.utc)
        time.sleep(0.2)  # a slow upload
        self.seen.append((self._connections.held_by_current_thread(),
                          self._stale_transactions(started)))
        return self._inner.put_file(key, path, **kwargs)

    def _stale_transactions(self, started: datetime) -> int:
        """PostgreSQL sessions of this database idle in a transaction begun before `started`."""
        if not self._database_url.startswith("postgresql"):
            return 0
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(self._database_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return connection.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state LIKE 'idle in transaction%' AND xact_start < :started"
                    " AND pid <> pg_backend_pid()"), {"started": started}).scalar_one()
        finally:
            engine.dispose()


def test_a_publish_holds_no_database_connection_while_it_uploads(app, settings, client,
                                                                  make_user, lora_dir):
    token = make_user("alice")
    hub = app.extensions["lorastack"]
    store = _WatchedStore(hub.store, _ConnectionsByThread(hub.db.engine), settings.database_url)
    hub.store = store
    response = publish(client, token, "alice/tiny", "1.0.0", lora_dir)
    assert response.status_code == 201, response.get_json()
    assert store.seen and all(seen == (0, 0) for seen in store.seen), store.seen


def test_a_hung_store_is_503_within_seconds_while_database_reads_answer(
        settings, client, make_user, lora_dir, moto_endpoint):
    # moto_endpoint only sets the dummy S3 credentials; the store itself is the hung one.
    from hub import create_app

    token = make_user("alice")
    assert publish(client, token, "alice/tiny", "1.0.0", lora_dir).status_code == 201
    with hung_endpoint() as endpoint:
        hung = create_app(settings.with_overrides(
            storage_url="s3://bucket/blobs", s3_endpoint_url=endpoint,
            s3_connect_timeout=1.0, s3_read_timeout=1.0, s3_max_attempts=2))
        try:
            hung_client = hung.test_client()
            started = time.monotonic()
            health = hung_client.get("/api/v1/health")
            assert health.status_code == 503
            assert health.get_json()["storage"] == "unavailable"
            assert health.get_json()["code"] == "storage_unavailable"
            assert_problem(publish(hung_client, token, "alice/tiny", "2.0.0", lora_dir),
                           503, "storage_unavailable")
            # A bound against hanging, not a benchmark: the store is given 1 s per try.
            assert time.monotonic() - started < 30
            listing = hung_client.get("/api/v1/adapters")
            assert listing.status_code == 200
            assert [a["id"] for a in listing.get_json()["items"]] == ["alice/tiny"]
            version = hung_client.get("/api/v1/adapters/alice/tiny/versions/1.0.0")
            assert version.status_code == 200 and version.get_json()["version"] == "1.0.0"
        finally:
            hung.extensions["lorastack"].close()
