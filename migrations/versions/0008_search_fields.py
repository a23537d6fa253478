"""search fields: the full-text index says which field each word is in

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 08:00:00

Ranking one score level at a time asks the index for rows whose words are in given
fields (this word in the name, that one in a tag but not the name). On SQLite the FTS5
table is rebuilt with detail='column', which keeps each term's columns and so allows
column filters (detail='none' keeps only the rows). On PostgreSQL the tsvector's weights
could not say it: the words are indexed without positions, and a lexeme without
positions carries no weight, so `'sql':*A` matched any field. The new index adds each
name word again as '=word' and each tag word as '+word' beside the plain words (a word
is letters and digits, so neither mark can start one). The expression is
hub.services.search.PG_VECTOR, written out again here as a migration must not change
with the code.
"""
from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

PG_INDEX = "ix_adapters_search_words"
PG_VECTOR = ("(array_to_tsvector(string_to_array(search_name, ' '))"
             " || array_to_tsvector(string_to_array(search_tags, ' '))"
             " || array_to_tsvector(string_to_array(search_text, ' '))"
             " || array_to_tsvector(string_to_array("
             "regexp_replace(search_name, '(\\S+)', '=\\1', 'g'), ' '))"
             " || array_to_tsvector(string_to_array("
             "regexp_replace(search_tags, '(\\S+)', '+\\1', 'g'), ' ')))")
PG_VECTOR_0005 = ("(setweight(array_to_tsvector(string_to_array(search_name, ' ')), 'A')"
                  " || setweight(array_to_tsvector(string_to_array(search_tags, ' ')), 'B')"
                  " || setweight(array_to_tsvector(string_to_array(search_text, ' ')), 'C'))")
SEARCH_COLUMNS = "search_name, search_tags, search_text"
# The same triggers as migration 0005's: dropping the FTS5 table does not drop them, but
# they are recreated with it so the pair reads as one unit here.
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


def _rebuild_sqlite(detail: str) -> None:
    for name in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER {name}")
    op.execute("DROP TABLE adapter_search")
    # The words are cut by hub.services.search; the tokenizer only splits on the spaces
    # between them (remove_diacritics 0: accents are already folded there).
    op.execute(f"CREATE VIRTUAL TABLE adapter_search USING fts5({SEARCH_COLUMNS},"
               f" content='adapters', content_rowid='id', detail='{detail}',"
               " prefix='2 3', tokenize='unicode61 remove_diacritics 0')")
    for statement in SQLITE_TRIGGERS.values():
        op.execute(statement)
    op.execute("INSERT INTO adapter_search(adapter_search) VALUES ('rebuild')")


def _reindex_postgresql(vector: str) -> None:
    op.execute(f"DROP INDEX {PG_INDEX}")
    op.execute(f"CREATE INDEX {PG_INDEX} ON adapters USING gin ({vector})")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _reindex_postgresql(PG_VECTOR)
    else:
        _rebuild_sqlite("column")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _reindex_postgresql(PG_VECTOR_0005)
    else:
        _rebuild_sqlite("none")
