"""catalog indexes: one per sort key with id, the tag lookup, a case-folded base model,
each adapter's words for search and the full-text index over them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:20:00

The search index is backend-specific and outside the models' metadata: on PostgreSQL a
GIN index over the words as a tsvector (the expression is hub.services.search.PG_VECTOR,
written out again here as a migration must not change with the code); on SQLite an FTS5
table over the adapters' search columns (external content, no second copy of the text)
that triggers keep in step. A later migration that rebuilds the adapters table on SQLite
(Alembic's batch mode copies it into a new one) drops those triggers and must create
them again.
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

from hub.services.search import document

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

PG_VECTOR = ("(setweight(array_to_tsvector(string_to_array(search_name, ' ')), 'A')"
             " || setweight(array_to_tsvector(string_to_array(search_tags, ' ')), 'B')"
             " || setweight(array_to_tsvector(string_to_array(search_text, ' ')), 'C'))")
SEARCH_COLUMNS = "search_name, search_tags, search_text"
SQLITE_TRIGGERS = {
    "adapters_search_insert": f"""
        CREATE TRIGGER adapters_search_insert AFTER INSERT ON adapters BEGIN
          INSERT INTO adapter_search(rowid, {SEARCH_COLUMNS})
          VALUES (new.id, new.search_name, new.search_tags, new.search_text);
        END""",
    "adapters_search_delete": f"""
        CREATE TRIGGER adapters_search_delete AFTER DELETE ON adapters BEGIN
          INSERT INTO adapter_search(adapter_search, rowid, {SEARCH_COLUMNS})
          VALUES ('delete', old.id, old.search_name, old.search_tags, old.search_text);
        END""",
    "adapters_search_update": f"""
        CREATE TRIGGER adapters_search_update
        AFTER UPDATE OF {SEARCH_COLUMNS} ON adapters BEGIN
          INSERT INTO adapter_search(adapter_search, rowid, {SEARCH_COLUMNS})
          VALUES ('delete', old.id, old.search_name, old.search_tags, old.search_text);
          INSERT INTO adapter_search(rowid, {SEARCH_COLUMNS})
          VALUES (new.id, new.search_name, new.search_tags, new.search_text);
        END""",
}


def _fill_derived() -> None:
    """Give each existing adapter its search words and base model key."""
    connection = op.get_bind()
    tags: dict[int, list[str]] = {}
    for adapter_id, tag in connection.execute(sa.text(
            "SELECT adapter_id, tag FROM adapter_tags ORDER BY adapter_id, position, id")):
        tags.setdefault(adapter_id, []).append(tag)
    rows = connection.execute(sa.text(
        "SELECT id, name, description, base_model FROM adapters")).all()
    update = sa.text("UPDATE adapters SET search_name = :search_name, search_tags ="
                     " :search_tags, search_text = :search_text, base_model_key = :key"
                     " WHERE id = :id")
    for start in range(0, len(rows), 1000):
        connection.execute(update, [
            {"id": row.id, "key": row.base_model.lower() if row.base_model else None,
             **document(row.name, tags.get(row.id, []), row.description)}
            for row in rows[start:start + 1000]])


def upgrade() -> None:
    for column in ("search_name", "search_tags", "search_text"):
        op.add_column('adapters', sa.Column(column, sa.Text(), nullable=False,
                                            server_default=''))
    op.add_column('adapters', sa.Column('base_model_key', sa.String(length=256),
                                        nullable=True))
    _fill_derived()
    op.create_index('ix_adapters_base_model_key_downloads_id', 'adapters',
                    ['base_model_key', 'downloads', 'id'])
    op.create_index('ix_adapters_downloads_id', 'adapters', ['downloads', 'id'])
    op.create_index('ix_adapters_created_at_id', 'adapters', ['created_at', 'id'])
    op.create_index('ix_adapters_updated_at_id', 'adapters', ['updated_at', 'id'])
    op.create_index('ix_adapters_name_id', 'adapters', ['name', 'id'])
    op.drop_index('ix_adapter_tags_tag', table_name='adapter_tags')
    op.create_index('ix_adapter_tags_tag_adapter_id', 'adapter_tags', ['tag', 'adapter_id'])
    op.create_index('ix_versions_adapter_id_created_at_id', 'versions',
                    ['adapter_id', 'created_at', 'id'])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX ix_adapters_search_words ON adapters USING gin ({PG_VECTOR})")
    else:
        # The words are cut by hub.services.search; the tokenizer only splits on the
        # spaces between them (remove_diacritics 0: accents are already folded there).
        op.execute(f"CREATE VIRTUAL TABLE adapter_search USING fts5({SEARCH_COLUMNS},"
                   " content='adapters', content_rowid='id', detail='none',"
                   " prefix='2 3', tokenize='unicode61 remove_diacritics 0')")
        for statement in SQLITE_TRIGGERS.values():
            op.execute(statement)
        op.execute("INSERT INTO adapter_search(adapter_search) VALUES ('rebuild')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_adapters_search_words")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
        op.execute("DROP TABLE adapter_search")
    op.drop_index('ix_versions_adapter_id_created_at_id', table_name='versions')
    op.drop_index('ix_adapter_tags_tag_adapter_id', table_name='adapter_tags')
    op.create_index('ix_adapter_tags_tag', 'adapter_tags', ['tag'])
    for name in ('ix_adapters_name_id', 'ix_adapters_updated_at_id', 'ix_adapters_created_at_id',
                 'ix_adapters_downloads_id', 'ix_adapters_base_model_key_downloads_id'):
        op.drop_index(name, table_name='adapters')
    with op.batch_alter_table('adapters', schema=None) as batch_op:
        for column in ('base_model_key', 'search_text', 'search_tags', 'search_name'):
            batch_op.drop_column(column)
