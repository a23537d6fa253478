"""blob locks: publish and gc take one per blob key for a transaction

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 12:40:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blob_locks',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_blob_locks'))
    )


def downgrade() -> None:
    op.drop_table('blob_locks')
