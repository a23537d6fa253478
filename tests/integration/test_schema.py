"""The migrations are the schema: after `upgrade head` nothing differs from the models."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hub import models  # noqa: F401  (registers the tables)
from hub.db import Base, Database


def _not_search_index(name, type_, _parent_names) -> bool:
    # The full-text index is backend-specific by design (migration 0005): an FTS5 table and
    # its shadow tables on SQLite, an expression index on PostgreSQL.
    from hub.services.search import FTS_TABLE, PG_INDEX

    if type_ == "table":
        return not (name == FTS_TABLE or name.startswith(FTS_TABLE + "_"))
    return name != PG_INDEX


def test_the_migrations_build_exactly_the_models_tables(settings):
    db = Database(settings.database_url)
    try:
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={
                "compare_type": True, "include_name": _not_search_index})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        db.dispose()


def test_name_keys_migration_keeps_existing_look_alikes_and_bounds_descriptions(settings):
    from alembic import command
    from sqlalchemy import text

    from hub.db import alembic_config, upgrade
    from hub.services.names import name_key

    db = Database(settings.database_url)
    try:
        command.downgrade(alembic_config(settings.database_url), "0003")
        now = "2026-01-01 00:00:00+00:00"
        with db.engine.begin() as connection:
            for name in ("alice", "Alice", "bob"):
                connection.execute(text(
                    "INSERT INTO users (name, is_admin, created_at) VALUES (:n, false, :t)"),
                    {"n": name, "t": now})
            owner = connection.execute(text("SELECT id FROM users WHERE name = 'alice'")).scalar()
            for name, description in (("my-lora", "d" * 20_000), ("My_Lora", "short")):
                connection.execute(text(
                    "INSERT INTO adapters (owner_id, name, description, visibility, downloads,"
                    " created_at, updated_at) VALUES (:o, :n, :d, 'public', 0, :t, :t)"),
                    {"o": owner, "n": name, "d": description, "t": now})
        upgrade(settings.database_url, "head")
        with db.engine.connect() as connection:
            users = dict(connection.execute(text("SELECT name, name_key FROM users")).all())
            adapters = connection.execute(text(
                "SELECT name, name_key, length(description) FROM adapters ORDER BY id")).all()
        assert users["alice"] == name_key("alice") and users["bob"] == name_key("bob")
        assert users["Alice"].startswith(name_key("alice") + "~")
        assert [tuple(row) for row in adapters] == [
            ("my-lora", name_key("my-lora"), 10_000), ("My_Lora", adapters[1][1], 5)]
        assert adapters[1][1].startswith(name_key("my-lora") + "~")
    finally:
        db.dispose()


def test_the_catalog_migration_indexes_existing_adapters_for_search(settings):
    from alembic import command
    from sqlalchemy import text

    from hub.db import alembic_config, upgrade
    from hub.services.catalog import Query, search_adapters

    db = Database(settings.database_url)
    try:
        command.downgrade(alembic_config(settings.database_url), "0004")
        now = "2026-01-01 00:00:00+00:00"
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO users (name, name_key, is_admin, created_at)"
                                    " VALUES ('alice', 'alice', false, :t)"), {"t": now})
            for name, description, base, tags in (
                    ("Mistral-Poet", "Writes sonnets.", "Org/Base", ["poetry"]),
                    ("coder", "Writes Mistral-flavoured café code.", None, ["code", "mistral"]),
                    ("other", "", None, [])):
                adapter = connection.execute(text(
                    "INSERT INTO adapters (owner_id, name, name_key, description, base_model,"
                    " visibility, downloads, created_at, updated_at) VALUES (1, :n, :n, :d,"
                    " :b, 'public', 0, :t, :t) RETURNING id"),
                    {"n": name, "d": description, "b": base, "t": now}).scalar()
                for position, tag in enumerate(tags):
                    connection.execute(text(
                        "INSERT INTO adapter_tags (adapter_id, tag, position) VALUES (:a, :g,"
                        " :p)"), {"a": adapter, "g": tag, "p": position})
        upgrade(settings.database_url, "head")

        def found(**query):
            with db.session() as session:
                return [a.name for a in search_adapters(session, None, Query(**query))[0]]

        assert found(search="mistr") == ["Mistral-Poet", "coder"]
        assert found(search="sonnet") == ["Mistral-Poet"]
        assert found(search="poetry") == ["Mistral-Poet"]
        assert found(search="cafe") == ["coder"]
        assert found(base_model="org/BASE") == ["Mistral-Poet"]
        with db.session() as session:  # and the index follows later edits
            session.scalar(select_adapter("other")).description = "a quokka, really"
        assert found(search="quokka") == ["other"]
    finally:
        db.dispose()


def select_adapter(name: str):
    from sqlalchemy import select

    from hub.models import Adapter

    return select(Adapter).where(Adapter.name == name)


def test_sqlite_has_the_planners_statistics_after_each_upgrade(settings):
    from sqlalchemy import text

    from hub.db import upgrade

    db = Database(settings.database_url)
    try:
        if db.engine.dialect.name != "sqlite":
            return  # PostgreSQL's autovacuum analyzes on its own
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO users (name, name_key, is_admin, created_at)"
                                    " VALUES ('alice', 'alice', false, '2026-01-01')"))
        upgrade(settings.database_url)  # nothing to migrate: as every `lorastack serve` does
        with db.engine.connect() as connection:
            tables = connection.execute(text(
                "SELECT DISTINCT tbl FROM sqlite_stat1")).scalars().all()
        assert "users" in tables, tables
    finally:
        db.dispose()
