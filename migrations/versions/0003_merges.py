"""merges: jobs, their sources and result files; version layouts and merge refusals

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:57:51.180519
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('merges',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('requester_id', sa.Integer(), nullable=False),
    sa.Column('cache_key', sa.String(length=64), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('modules_total', sa.Integer(), nullable=False),
    sa.Column('output_bytes', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('device', sa.String(length=128), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_detail', sa.Text(), nullable=True),
    sa.Column('license', sa.JSON(), nullable=False),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('archive_sha256', sa.String(length=64), nullable=True),
    sa.Column('archive_size', sa.BigInteger(), nullable=True),
    sa.Column('published_version_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['published_version_id'], ['versions.id'], name=op.f('fk_merges_published_version_id_versions')),
    sa.ForeignKeyConstraint(['requester_id'], ['users.id'], name=op.f('fk_merges_requester_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merges'))
    )
    with op.batch_alter_table('merges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_merges_cache_key'), ['cache_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_merges_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_merges_finished_at'), ['finished_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_merges_requester_id'), ['requester_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_merges_status'), ['status'], unique=False)

    op.create_table('merge_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('merge_id', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=128), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('blob_key', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['merge_id'], ['merges.id'], name=op.f('fk_merge_files_merge_id_merges'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merge_files')),
    sa.UniqueConstraint('merge_id', 'path', name=op.f('uq_merge_files_merge_id_path'))
    )
    with op.batch_alter_table('merge_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_merge_files_blob_key'), ['blob_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_merge_files_merge_id'), ['merge_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_merge_files_sha256'), ['sha256'], unique=False)

    op.create_table('merge_sources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('merge_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['merge_id'], ['merges.id'], name=op.f('fk_merge_sources_merge_id_merges'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_merge_sources_version_id_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merge_sources')),
    sa.UniqueConstraint('merge_id', 'position', name=op.f('uq_merge_sources_merge_id_position'))
    )
    with op.batch_alter_table('merge_sources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_merge_sources_merge_id'), ['merge_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_merge_sources_version_id'), ['version_id'], unique=False)

    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('layout', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('not_mergeable_reason', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_column('not_mergeable_reason')
        batch_op.drop_column('layout')

    with op.batch_alter_table('merge_sources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_merge_sources_version_id'))
        batch_op.drop_index(batch_op.f('ix_merge_sources_merge_id'))

    op.drop_table('merge_sources')
    with op.batch_alter_table('merge_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_merge_files_sha256'))
        batch_op.drop_index(batch_op.f('ix_merge_files_merge_id'))
        batch_op.drop_index(batch_op.f('ix_merge_files_blob_key'))

    op.drop_table('merge_files')
    with op.batch_alter_table('merges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_merges_status'))
        batch_op.drop_index(batch_op.f('ix_merges_requester_id'))
        batch_op.drop_index(batch_op.f('ix_merges_finished_at'))
        batch_op.drop_index(batch_op.f('ix_merges_created_at'))
        batch_op.drop_index(batch_op.f('ix_merges_cache_key'))

    op.drop_table('merges')
