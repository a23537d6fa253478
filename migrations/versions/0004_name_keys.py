"""name keys: user and adapter names unique after case and look-alike folding; descriptions
bounded by the API's limit

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 02:15:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

from hub.formats.text import MAX_DESCRIPTION
from hub.services.names import name_key

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _fill_keys(table: str, scope: str | None) -> None:
    """Give each row its name key. Rows that already collide keep working: the later ones
    get a key no name can fold to ('~' and the id), so only new look-alikes are refused."""
    connection = op.get_bind()
    columns = "id, name" + (f", {scope}" if scope else "")
    seen: set[tuple] = set()
    for row in connection.execute(sa.text(f"SELECT {columns} FROM {table} ORDER BY id")):
        key = name_key(row.name)
        group = (getattr(row, scope) if scope else None, key)
        if group in seen:
            key = f"{key}~{row.id}"
        seen.add(group)
        connection.execute(sa.text(f"UPDATE {table} SET name_key = :key WHERE id = :id"),
                           {"key": key, "id": row.id})


def upgrade() -> None:
    # Added nullable and indexed, not constrained: on SQLite a NOT NULL column or a unique
    # constraint means rebuilding the table, which its foreign keys refuse once it has rows.
    op.add_column('users', sa.Column('name_key', sa.String(length=64), nullable=True))
    op.add_column('adapters', sa.Column('name_key', sa.String(length=96), nullable=True))
    _fill_keys('users', None)
    _fill_keys('adapters', 'owner_id')
    op.create_index('ix_users_name_key', 'users', ['name_key'], unique=True)
    op.create_index('ix_adapters_owner_id_name_key', 'adapters', ['owner_id', 'name_key'],
                    unique=True)
    # Descriptions from README front matter were stored unbounded; listings carry them.
    op.execute(sa.text("UPDATE adapters SET description = substr(description, 1, :limit)"
                       " WHERE length(description) > :limit")
               .bindparams(limit=MAX_DESCRIPTION))


def downgrade() -> None:
    op.drop_index('ix_adapters_owner_id_name_key', table_name='adapters')
    op.drop_index('ix_users_name_key', table_name='users')
    with op.batch_alter_table('adapters', schema=None) as batch_op:
        batch_op.drop_column('name_key')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('name_key')
