"""Catalog search: what a search text matches and how matches rank, the one rule every
surface (the API's `search=`, the web catalog's search box, the Hugging Face protocol's
`list_models(search=...)`) goes through `hub.services.catalog.search_adapters` to use.

The rule, the same on every backend:
- Text is cut into words: runs of letters and digits, case and accents folded
  (`words`); everything else (punctuation, quotes, operators) only separates words.
- An adapter matches when every word of the search starts a word of its name, its tags
  or its description ("mistr" finds "Mistral-7B"; "7b" finds it too).
- Each search word scores 4 when it starts a word of the name, else 2 when it starts a
  word of a tag, else 1 (the description); matches sort by the total, then downloads,
  then id, all descending.

Each adapter row carries its name, tags and description as space-separated words
(`search_name`, `search_tags`, `search_text`): cut here (`document`) and written by a
mapper event in hub.models whenever one of the three changes, so no code path (publish,
PATCH, tag changes, merges published) can forget it. The score is plain
SQL over the two short columns, so both backends compute the same integers; the full-text
index only finds candidates fast: on PostgreSQL a GIN index over the words as a tsvector,
on SQLite an FTS5 table the database keeps in step by triggers (migration 0005). Neither
backend's own tokenizer sees the text: both index the words cut here, so they agree on
what a word is.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import (ColumnElement, Integer, Select, and_, case, cast, literal,
                        literal_column, select, table)
from sqlalchemy.dialects.postgresql import TSQUERY

from hub.errors import InvalidRequest
from hub.models import Adapter

#: Most words a search may have: each costs a term lookup and a score term.
MAX_WORDS = 8
#: Words are cut at this length (a search word too, so it still matches): PostgreSQL
#: refuses a lexeme over 2047 bytes, and nobody searches for a longer one.
MAX_WORD_LENGTH = 64
NAME_SCORE, TAG_SCORE, TEXT_SCORE = 4, 2, 1
#: The SQLite FTS5 table and the PostgreSQL index that find candidates (migration 0005);
#: they are backend-specific, so they are not in the models' metadata.
FTS_TABLE = "adapter_search"
PG_INDEX = "ix_adapters_search_words"

_WORD = re.compile(r"[^\W_]+")


def words(value: str | None) -> list[str]:
    """The words of `value`: letters and digits, case-folded, accents removed."""
    if not value:
        return []
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", value).casefold())
    plain = "".join(char for char in folded if not unicodedata.combining(char))
    return [word[:MAX_WORD_LENGTH] for word in _WORD.findall(unicodedata.normalize("NFC", plain))]


def document(name: str | None, tags: list[str], description: str | None) -> dict[str, str]:
    """The search columns of an adapter: its name, tags and description as words."""
    return {"search_name": " ".join(words(name)),
            "search_tags": " ".join(word for tag in tags for word in words(tag)),
            "search_text": " ".join(words(description))}


@dataclass(frozen=True)
class Terms:
    """The words of a search text, deduplicated, in the order given."""

    words: tuple[str, ...]

    @classmethod
    def parse(cls, search: str | None) -> Terms:
        """Terms of `search`; InvalidRequest past MAX_WORDS words."""
        found = tuple(dict.fromkeys(words(search)))
        if len(found) > MAX_WORDS:
            raise InvalidRequest(f"'search' has {len(found)} words; use at most {MAX_WORDS}.")
        return cls(found)

    def __bool__(self) -> bool:
        return bool(self.words)


def score(terms: Terms) -> ColumnElement[int]:
    """SQL: the relevance score of a matching row (the rule in the module docstring)."""
    if not terms:
        return literal(0, Integer)
    total = None
    for word in terms.words:
        prefix = f"% {word}%"  # words are letters and digits: nothing to escape
        each = case((literal(" ").concat(Adapter.search_name).like(prefix), NAME_SCORE),
                    (literal(" ").concat(Adapter.search_tags).like(prefix), TAG_SCORE),
                    else_=TEXT_SCORE)
        total = each if total is None else total + each
    return total


def top_score(terms: Terms) -> int:
    """The highest score `terms` can give: every word in the name."""
    return NAME_SCORE * len(terms.words)


def in_names(terms: Terms, search_name=Adapter.search_name) -> ColumnElement[bool]:
    """SQL: rows whose name holds every word (the rows scoring `top_score`)."""
    return and_(*(literal(" ").concat(search_name).like(f"% {word}%")
                  for word in terms.words))


def matches(terms: Terms, dialect: str) -> ColumnElement[bool]:
    """SQL: rows where every word starts a word of the name, tags or description."""
    if dialect == "postgresql":
        return _pg_match(terms)
    return Adapter.id.in_(candidates(terms, dialect).scalar_subquery())


def candidates(terms: Terms, dialect: str) -> Select:
    """SQL: the ids of the matching rows, straight from the full-text index."""
    if dialect == "postgresql":
        return select(Adapter.id).where(_pg_match(terms))
    query = " AND ".join(f'"{word}"*' for word in terms.words)
    return select(literal_column("rowid")).select_from(table(FTS_TABLE)).where(
        literal_column(FTS_TABLE).op("MATCH")(query))


def _pg_match(terms: Terms) -> ColumnElement[bool]:
    # Cast, not to_tsquery: the words are already cut, the parser must not cut again.
    query = " & ".join(f"'{word}':*" for word in terms.words)
    return literal_column(PG_VECTOR).op("@@")(cast(literal(query), TSQUERY))


#: The tsvector PostgreSQL's index is built on: the words taken verbatim (no parser),
#: weighted name A, tags B, description C. Migration 0005 writes the same text, so the
#: planner recognises the index's expression (written inline: a bound ' ' would not be).
PG_VECTOR = ("(setweight(array_to_tsvector(string_to_array(search_name, ' ')), 'A')"
             " || setweight(array_to_tsvector(string_to_array(search_tags, ' ')), 'B')"
             " || setweight(array_to_tsvector(string_to_array(search_text, ' ')), 'C'))")
