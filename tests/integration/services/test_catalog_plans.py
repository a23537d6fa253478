"""The catalog's queries are index ranges, on both backends, however deep the page.

Each test runs the statement hub.services.catalog.search_adapters sends through the
database's EXPLAIN. On PostgreSQL the planner is told sorts and sequential scans are
expensive (a table this small would otherwise be scanned whole, rightly): a plan that
still sorts or scans has no index that can serve the query.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, text

from hub.db import Database
from hub.models import Adapter, AdapterTag, User, Version
from hub.services import relevance
from hub.services.catalog import Query, search_adapters

ADAPTERS = 1500


@pytest.fixture
def db(settings):
    database = Database(settings.database_url)
    rng = random.Random(3)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with database.session() as session:
        owners = [User(name=f"owner{i}") for i in range(30)]
        session.add_all(owners)
        for i in range(ADAPTERS):
            words = rng.sample(["sql", "chat", "poem", "math", "code", "story"], 2)
            session.add(Adapter(
                owner=owners[i % 30], name=f"{'-'.join(words)}-{i}", description="x y z",
                base_model=rng.choice(["org/Base-A", "org/Base-B"]), license="mit",
                visibility="private" if i % 20 == 0 else "public",
                downloads=rng.randint(0, 50), created_at=start + timedelta(minutes=i),
                updated_at=start + timedelta(minutes=i),
                tags=[AdapterTag(tag=rng.choice(["lora", "peft", "rare"]), position=0)],
                versions=[Version(label="1", created_at=start, license="mit",
                                  peft_type="LORA", fingerprint=f"{i:064d}")]))
    database.optimize()
    if database.engine.dialect.name == "postgresql":
        with database.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE"))
    yield database
    database.dispose()


def page_plan(db: Database, query: Query, containing: str = "", sorts: bool = False) -> str:
    """The plan of the statement that finds the page's ids: the first one sent, or the
    last whose text holds `containing`; `sorts`: PostgreSQL may sort as it sees fit."""
    sent = []

    def grab(_conn, _cursor, statement, parameters, _context, _many):
        sent.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", grab)
    try:
        with db.session() as session:
            search_adapters(session, None, query)
    finally:
        event.remove(db.engine, "before_cursor_execute", grab)
    statement, parameters = [(statement, parameters) for statement, parameters in sent
                             if containing in statement][-1 if containing else 0]
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if db.engine.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            lines = [row[-1] for row in cursor.fetchall()]
            # The page's own plan: what runs before its ids are joined to the rest.
            start = next((n for n, line in enumerate(lines)
                          if line.startswith("MATERIALIZE")), -1)
            inner = lines[start + 1:]
            inner = inner[:next((n for n, line in enumerate(inner)
                                 if line.startswith("SCAN anon_")), len(inner))]
            return "\n".join(inner)
        cursor.execute(f"SET enable_sort = {'on' if sorts else 'off'}")
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("EXPLAIN " + statement, parameters)
        lines = [row[0] for row in cursor.fetchall()]
        # The page's subquery is the Limit under the outer join; the outer sort of its
        # (at most limit + 1) rows is not what is being checked.
        inner = lines[next(n for n, line in enumerate(lines) if "Limit" in line):]
        return "\n".join(inner)
    finally:
        raw.close()


def deep_cursor(db: Database, query: Query) -> str:
    """The cursor of a page 1000 rows deep."""
    cursor = None
    for _ in range(10):
        with db.session() as session:
            _, cursor = search_adapters(session, None, Query(**{**query.__dict__, "limit": 100,
                                                                 "cursor": cursor}))
    assert cursor is not None
    return cursor


@pytest.mark.parametrize("sort,index", [("downloads", "ix_adapters_downloads_id"),
                                        ("created", "ix_adapters_created_at_id"),
                                        ("updated", "ix_adapters_updated_at_id"),
                                        ("name", "ix_adapters_name_id")])
def test_each_sort_reads_its_index_in_order_at_any_depth(db, sort, index):
    first = page_plan(db, Query(sort=sort))
    deep = page_plan(db, Query(sort=sort, cursor=deep_cursor(db, Query(sort=sort))))
    for plan in (first, deep):
        assert index in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
    # Deep down, the cursor is where the index range starts, not a filter on a scan.
    if db.engine.dialect.name == "sqlite":
        assert f"SEARCH adapters USING INDEX {index} (" in deep or (
            f"SEARCH adapters USING COVERING INDEX {index} (") in deep, deep
    else:
        assert "Index Cond: (ROW(" in deep, deep


def test_a_tag_filter_and_a_base_model_filter_use_indexes(db):
    tagged = page_plan(db, Query(tag="rare", sort="name"))
    assert "adapter_tags" in tagged and ("INDEX" in tagged or "Index" in tagged), tagged
    based = page_plan(db, Query(base_model="ORG/base-a"))
    assert "ix_adapters_base_model_key_downloads_id" in based, based
    assert "TEMP B-TREE" not in based and "Sort" not in based, based


def test_search_finds_candidates_through_the_full_text_index(db, monkeypatch):
    # The statement that ranks every match (a search not read a level at a time).
    monkeypatch.setattr(relevance, "ranked_keys", lambda *args: None)
    match = "MATCH" if db.engine.dialect.name == "sqlite" else "@@"
    plan = page_plan(db, Query(search="poem ma", limit=100), containing=match)
    if db.engine.dialect.name == "sqlite":
        assert "VIRTUAL TABLE INDEX" in plan and "SCAN adapters" not in plan, plan
    else:
        assert "Bitmap Index Scan on ix_adapters_search_words" in plan, plan


def test_a_dense_level_is_walked_along_the_downloads_index_without_a_sort(db):
    # "sql" is in a third of the names: the page comes from a walk of the top level.
    with db.session() as session:
        _, cursor = search_adapters(session, None, Query(search="sql", limit=100))
    for query in (Query(search="sql"), Query(search="sql", cursor=cursor)):
        plan = page_plan(db, query, containing="LIKE")
        assert "ix_adapters_downloads_id" in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
        assert "Bitmap" not in plan and "SCAN adapters\n" not in plan + "\n", plan


def test_a_sparse_level_is_fetched_through_the_full_text_index_by_field(db, monkeypatch):
    # A walk too short for any level: each is fetched whole, through the index.
    monkeypatch.setattr(relevance, "WINDOW_PER_ROW", 1)
    monkeypatch.setattr(relevance, "FEW_MATCHES", 0)
    sqlite = db.engine.dialect.name == "sqlite"
    plan = page_plan(db, Query(search="sql poem"), containing="MATCH" if sqlite else "@@",
                     sorts=True)
    if sqlite:
        assert "VIRTUAL TABLE INDEX" in plan and "SCAN adapters" not in plan, plan
    else:
        assert "Bitmap Index Scan on ix_adapters_search_words" in plan, plan
        # The top level: both words in the name (the marked lexemes of migration 0008).
        assert "''=sql'':* & ''=poem'':*" in plan, plan
