"""user passwords: a scrypt hash for signing in to the web pages (null: no password set)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: existing users (and users made for tokens only) have no password and
    # cannot sign in to the pages until `lorastack users set-password` gives them one.
    op.add_column('users', sa.Column('password_hash', sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('password_hash')
