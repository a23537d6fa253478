"""The migrations are the schema: after `upgrade head` nothing differs from the models."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hub import models  # noqa: F401  (registers the tables)
from hub.db import Base, Database


def test_the_migrations_build_exactly_the_models_tables(settings):
    db = Database(settings.database_url)
    try:
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        db.dispose()
