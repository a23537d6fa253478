"""registry tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 03:57:44.489431
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('name', name=op.f('uq_users_name'))
    )
    op.create_table('adapters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=96), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('base_model', sa.String(length=256), nullable=True),
    sa.Column('license', sa.String(length=64), nullable=True),
    sa.Column('task', sa.String(length=64), nullable=True),
    sa.Column('visibility', sa.String(length=16), nullable=False),
    sa.Column('downloads', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_adapters_owner_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
    sa.UniqueConstraint('owner_id', 'name', name=op.f('uq_adapters_owner_id_name'))
    )
    with op.batch_alter_table('adapters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapters_base_model'), ['base_model'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapters_license'), ['license'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapters_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapters_task'), ['task'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_tokens_token_hash'))
    )
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('adapter_tags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_adapter_tags_adapter_id_adapters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapter_tags')),
    sa.UniqueConstraint('adapter_id', 'tag', name=op.f('uq_adapter_tags_adapter_id_tag'))
    )
    with op.batch_alter_table('adapter_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapter_tags_tag'), ['tag'], unique=False)

    op.create_table('versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('license', sa.String(length=64), nullable=False),
    sa.Column('license_name', sa.String(length=256), nullable=True),
    sa.Column('license_link', sa.String(length=1024), nullable=True),
    sa.Column('base_model', sa.String(length=256), nullable=True),
    sa.Column('peft_type', sa.String(length=32), nullable=False),
    sa.Column('task_type', sa.String(length=64), nullable=True),
    sa.Column('r', sa.Integer(), nullable=True),
    sa.Column('lora_alpha', sa.Float(), nullable=True),
    sa.Column('target_modules', sa.JSON(), nullable=False),
    sa.Column('num_parameters', sa.BigInteger(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('mergeable', sa.Boolean(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('yanked', sa.Boolean(), nullable=False),
    sa.Column('yank_reason', sa.Text(), nullable=True),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_versions_adapter_id_adapters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_versions_created_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_versions')),
    sa.UniqueConstraint('adapter_id', 'label', name=op.f('uq_versions_adapter_id_label'))
    )
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_versions_adapter_id'), ['adapter_id'], unique=False)

    op.create_table('version_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=128), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('blob_key', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_version_files_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_version_files')),
    sa.UniqueConstraint('version_id', 'path', name=op.f('uq_version_files_version_id_path'))
    )
    with op.batch_alter_table('version_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_version_files_sha256'), ['sha256'], unique=False)

    op.create_table('version_parents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('parent_version_id', sa.Integer(), nullable=False),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['parent_version_id'], ['versions.id'], name=op.f('fk_version_parents_parent_version_id_versions')),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_version_parents_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_version_parents'))
    )
    with op.batch_alter_table('version_parents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_version_parents_version_id'), ['version_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('version_parents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_version_parents_version_id'))

    op.drop_table('version_parents')
    with op.batch_alter_table('version_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_version_files_sha256'))

    op.drop_table('version_files')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_versions_adapter_id'))

    op.drop_table('versions')
    with op.batch_alter_table('adapter_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapter_tags_tag'))

    op.drop_table('adapter_tags')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_user_id'))

    op.drop_table('tokens')
    with op.batch_alter_table('adapters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapters_task'))
        batch_op.drop_index(batch_op.f('ix_adapters_owner_id'))
        batch_op.drop_index(batch_op.f('ix_adapters_license'))
        batch_op.drop_index(batch_op.f('ix_adapters_base_model'))

    op.drop_table('adapters')
    op.drop_table('users')

