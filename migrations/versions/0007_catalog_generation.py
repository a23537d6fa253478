"""catalog generation: one counter that every catalog write moves on, so a process can tell
whether a listing it computed earlier still holds

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    state = op.create_table(
        'catalog_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('generation', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_state')),
    )
    # The one row: hub.models bumps it in the transaction of each catalog write.
    op.bulk_insert(state, [{'id': 1, 'generation': 0}])


def downgrade() -> None:
    op.drop_table('catalog_state')
