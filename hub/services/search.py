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
PATCH, tag changes, merges published) can forget it. The score is plain SQL over the two
short columns, so both backends compute the same integers; the full-text index finds
candidates fast, and the rows of one score level (`levels`: which field holds each
word): on PostgreSQL a GIN index over the words as a tsvector, on SQLite an FTS5 table
that keeps each word's columns, kept in step by triggers (migrations 0005 and 0008).
Neither backend's own tokenizer sees the text: both index the words cut here, so they
agree on what a word is.
"""
from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import (ColumnElement, Integer, Select, and_, case, cast, literal,
                        literal_column, or_, select, table)
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


def score(terms: Terms, row=Adapter) -> ColumnElement[int]:
    """SQL: the relevance score of a matching row (the rule in the module docstring);
    `row` is the adapters table, or a subquery's columns that include its search ones."""
    if not terms:
        return literal(0, Integer)
    total = None
    for word in terms.words:
        each = case((_has(row.search_name, word), NAME_SCORE),
                    (_has(row.search_tags, word), TAG_SCORE), else_=TEXT_SCORE)
        total = each if total is None else total + each
    return total


#: Searches of at most this many words are ranked one score level at a time (`levels`):
#: a level is an OR of every way to give each word a field, 3**words of them.
MAX_LEVEL_WORDS = 3
_FIELDS = (NAME_SCORE, TAG_SCORE, TEXT_SCORE)


def levels(terms: Terms) -> list[tuple[int, tuple[tuple[int, ...], ...]]]:
    """Each total score the words can make, highest first, with the ways to make it: for
    each way, every word's score (which of its fields is the first to hold it)."""
    ways: dict[int, list[tuple[int, ...]]] = {}
    for way in itertools.product(_FIELDS, repeat=len(terms.words)):
        ways.setdefault(sum(way), []).append(way)
    return sorted(((total, tuple(each)) for total, each in ways.items()), reverse=True)


def _has(column, word: str) -> ColumnElement[bool]:
    # Whether a word of `column` starts with `word` (letters and digits: nothing to escape).
    return literal(" ").concat(column).like(f"% {word}%")


def at_level(terms: Terms, ways: tuple[tuple[int, ...], ...], row=Adapter
             ) -> ColumnElement[bool]:
    """SQL, checked row by row without any index: the rows scoring one level (made the
    `ways` of `levels`), each word in the field that gives it its score and in none that
    scores more. Exactly the matches whose `score` is the level's total; written by
    fields so that a row fails at its first word in the wrong place."""
    return or_(*(and_(*(_in_field(row, word, field) for word, field in zip(terms.words, way)))
                 for way in ways))


def _in_field(row, word: str, field: int) -> ColumnElement[bool]:
    name, tags = _has(row.search_name, word), _has(row.search_tags, word)
    if field == NAME_SCORE:
        return name
    if field == TAG_SCORE:
        return and_(~name, tags)
    return and_(~name, ~tags, _has(row.search_text, word))


def in_level(terms: Terms, ways: tuple[tuple[int, ...], ...], dialect: str
             ) -> ColumnElement[bool]:
    """SQL: the rows scoring one level (made the `ways` of `levels`), found through the
    full-text index: each word in the field that gives it its score, and in none that
    scores more."""
    if dialect == "postgresql":
        return _pg_level(terms, ways)
    query = " OR ".join("(" + " AND ".join(_fts_field(word, field) for word, field
                                           in zip(terms.words, way)) + ")" for way in ways)
    return Adapter.id.in_(_fts_ids(query).scalar_subquery())


def _pg_level(terms: Terms, ways: tuple[tuple[int, ...], ...]) -> ColumnElement[bool]:
    query = " | ".join("(" + " & ".join(_pg_field(word, field) for word, field
                                        in zip(terms.words, way)) + ")" for way in ways)
    return literal_column(PG_VECTOR).op("@@")(cast(literal(query), TSQUERY))


# The columns (SQLite) and the marks of PG_VECTOR's lexemes (PostgreSQL) of each field.
_FTS_COLUMNS = {NAME_SCORE: "search_name", TAG_SCORE: "search_tags", TEXT_SCORE: "search_text"}
_PG_MARKS = {NAME_SCORE: "=", TAG_SCORE: "+"}


def _fts_field(word: str, field: int) -> str:
    found = f'{{{_FTS_COLUMNS[field]}}}:"{word}"*'
    above = [_FTS_COLUMNS[other] for other in _FIELDS if other > field]
    return f'({found} NOT {{{" ".join(above)}}}:"{word}"*)' if above else found


def _pg_field(word: str, field: int) -> str:
    found = f"'{_PG_MARKS.get(field, '')}{word}':*"
    above = [f"!'{_PG_MARKS[other]}{word}':*" for other in _FIELDS if other > field]
    return "(" + " & ".join([found, *above]) + ")"


def matches(terms: Terms, dialect: str) -> ColumnElement[bool]:
    """SQL: rows where every word starts a word of the name, tags or description."""
    if dialect == "postgresql":
        return _pg_match(terms)
    return Adapter.id.in_(candidates(terms, dialect).scalar_subquery())


def candidates(terms: Terms, dialect: str) -> Select:
    """SQL: the ids of the matching rows, straight from the full-text index."""
    if dialect == "postgresql":
        return select(Adapter.id).where(_pg_match(terms))
    return _fts_ids(" AND ".join(f'"{word}"*' for word in terms.words))


def _fts_ids(query: str) -> Select:
    return select(literal_column("rowid")).select_from(table(FTS_TABLE)).where(
        literal_column(FTS_TABLE).op("MATCH")(query))


def _pg_match(terms: Terms) -> ColumnElement[bool]:
    # Cast, not to_tsquery: the words are already cut, the parser must not cut again.
    query = " & ".join(f"'{word}':*" for word in terms.words)
    return literal_column(PG_VECTOR).op("@@")(cast(literal(query), TSQUERY))


#: The tsvector PostgreSQL's index is built on: the words taken verbatim (no parser), then
#: each name word again as '=word' and each tag word as '+word', so a query can say which
#: field a word must be in (`in_level`). Words are indexed without positions, and such
#: a lexeme carries no weight, so weights could not. Migration 0008 writes the same text,
#: so the planner recognises the index's expression (written inline: a bound ' ' would
#: not be).
PG_VECTOR = ("(array_to_tsvector(string_to_array(search_name, ' '))"
             " || array_to_tsvector(string_to_array(search_tags, ' '))"
             " || array_to_tsvector(string_to_array(search_text, ' '))"
             " || array_to_tsvector(string_to_array("
             "regexp_replace(search_name, '(\\S+)', '=\\1', 'g'), ' '))"
             " || array_to_tsvector(string_to_array("
             "regexp_replace(search_tags, '(\\S+)', '+\\1', 'g'), ' ')))")
