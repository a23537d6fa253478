"""Database plumbing: the declarative base, the engine and the one unit of work."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from hub.errors import DatabaseUnavailable
from hub.resources import MIGRATIONS_DIR

# Stable constraint names, so Alembic migrations name things the same on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



class Base(DeclarativeBase):
    """Declarative base for every model, with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout for the threaded server."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # READ COMMITTED whatever the server's default: a statement that waited on a lock (the
    # blob locks of hub.services.blobs) must see what the holder committed meanwhile.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10,
                         isolation_level="READ COMMITTED", connect_args={"connect_timeout": 5})


class Database:
    """An engine and its session factory; `session()` is the unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Commit on success, roll back on any error: the one place that does either."""
        session = self._factory()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            raise DatabaseUnavailable(f"The database is unavailable: {exc.orig}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def check(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "down" for health purposes
            raise DatabaseUnavailable(f"The database is unavailable: {exc}") from exc

    def optimize(self) -> None:
        """Refresh the query planner's statistics where the database does not do it itself.

        SQLite has none until ANALYZE runs, and without them it may pick an index that does
        not serve the query (hub.services.catalog's pages rely on the right one); the limit
        makes it a sample, fast at any size. PostgreSQL's autovacuum analyzes on its own.
        """
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.begin() as connection:
            connection.execute(text("PRAGMA analysis_limit=1000"))
            connection.execute(text("ANALYZE"))

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def alembic_config(url: str):
    """An Alembic Config pointing at migrations/ with `url` as the target."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats '%' specially.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations up to `revision`, then refresh the planner's statistics."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
    # After migrations (new indexes need statistics), and so on every `lorastack serve`.
    db = Database(url)
    try:
        db.optimize()
    finally:
        db.dispose()
