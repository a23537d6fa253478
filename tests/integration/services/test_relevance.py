"""Relevance pages read a level at a time give exactly the full ranking, on both backends.

The catalog below puts each search word in every field combination (name, tag,
description, several at once, none), with downloads that tie often, private adapters and
the other filters' columns varied, so that every score level of one, two and three words
is populated. Each test compares the level-by-level pages (hub.services.relevance) with
the statement that scores and sorts every match, page by page through the cursors, with
the walk's window made small enough that walks fall short and levels are fetched whole.
"""
from __future__ import annotations

import itertools
import random
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from hub.db import Database
from hub.models import Adapter, AdapterTag, User
from hub.services import relevance, search
from hub.services.accounts import Principal
from hub.services.catalog import Query, search_adapters

WORDS = ("alpha", "beta", "gamma")
# Where a word may be: nowhere, or any non-empty set of the three fields; the lower fields
# alone more often, so that the lowest levels (every word in the description) have rows.
PLACES = [()] + [combo for n in (1, 2, 3) for combo in
                 itertools.combinations(("name", "tags", "text"), n)] + [("tags",), ("text",)] * 2


@pytest.fixture
def db(settings):
    database = Database(settings.database_url)
    rng = random.Random(15)
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with database.session() as session:
        owners = [User(name=f"owner{i}") for i in range(4)]
        session.add_all(owners)
        for i in range(420):
            name, tags, text = [f"n{i}"], ["misc"], ["about"]
            for word in WORDS:
                place = rng.choice(PLACES)
                # Prefixes of longer words too: "alpha" finds "alphanumeric".
                spelled = word + rng.choice(["", "", "numeric"])
                for field, words in (("name", name), ("tags", tags), ("text", text)):
                    if field in place:
                        words.append(spelled)
            tag_rows = [AdapterTag(tag=tag, position=p) for p, tag in enumerate(tags)]
            tag_rows.append(AdapterTag(tag=rng.choice(["lora", "peft"]), position=len(tags)))
            session.add(Adapter(
                owner=owners[i % 4], name="-".join(name), description=" ".join(text),
                base_model=rng.choice(["org/Base-A", "org/Base-B"]),
                license=rng.choice(["mit", "apache-2.0"]),
                visibility="private" if i % 9 == 0 else "public",
                downloads=rng.choice([0, 0, 0, 1, 2, 3, 5, 8, 40]), created_at=moment,
                updated_at=moment, tags=tag_rows))
        session.flush()
        ids = {owner.name: owner.id for owner in owners}
    database.optimize()
    database.owner_ids = ids
    yield database
    database.dispose()


def every_page(db: Database, principal, query: Query, *, whole: bool) -> list[tuple]:
    """Every page of `query` in order: (id, score) of each adapter."""
    seen, cursor = [], None
    while True:
        with db.session() as session:
            keep = relevance.ranked_keys
            if whole:
                relevance.ranked_keys = lambda *args: None
            try:
                items, cursor = search_adapters(session, principal, Query(
                    **{**query.__dict__, "cursor": cursor}))
            finally:
                relevance.ranked_keys = keep
            seen += [item.id for item in items]
        if cursor is None:
            return seen


@pytest.fixture
def level_by_level(monkeypatch):
    """The level path for every search, however few its matches."""
    monkeypatch.setattr(relevance, "FEW_MATCHES", 0)
    return monkeypatch


SEARCHES = ["alpha", "beta", "alpha beta", "gamma alpha", "alpha beta gamma", "alphan",
            "alpha n1", "zzz", "alpha zzz"]


@pytest.mark.parametrize("window,probe", [(1, 1), (3, 1), (12, 2), (100, 10)])
@pytest.mark.parametrize("text", SEARCHES)
def test_level_pages_are_the_full_ranking_across_levels_and_cursors(
        db, level_by_level, window, probe, text):
    level_by_level.setattr(relevance, "WINDOW_PER_ROW", window)
    level_by_level.setattr(relevance, "PROBE_PER_ROW", probe)
    for limit in (3, 25):
        query = Query(search=text, limit=limit)
        assert every_page(db, None, query, whole=False) == every_page(
            db, None, query, whole=True), (text, window, limit)


def test_every_level_of_three_words_is_populated(db):
    # Otherwise the comparisons above would not cover them all.
    terms = search.Terms.parse("alpha beta gamma")
    with db.session() as session:
        scores = select(search.score(terms).label("total")).where(
            search.matches(terms, db.engine.dialect.name)).subquery()
        totals = set(session.scalars(select(scores.c.total).distinct()))
    assert totals == {total for total, _ in search.levels(terms)}


@pytest.mark.parametrize("window", [1, 12, 100])
@pytest.mark.parametrize("filters", [
    {"tag": "lora"}, {"tag": "alpha"}, {"base_model": "ORG/base-a"}, {"license": "mit"},
    {"owner": "owner1"}, {"owner": "owner1", "tag": "peft"}])
def test_level_pages_with_filters_are_the_full_ranking(db, level_by_level, window, filters):
    level_by_level.setattr(relevance, "WINDOW_PER_ROW", window)
    level_by_level.setattr(relevance, "PROBE_PER_ROW", 2)
    for text in ("alpha", "alpha beta", "beta gamma alpha"):
        query = Query(search=text, limit=7, **filters)
        assert every_page(db, None, query, whole=False) == every_page(
            db, None, query, whole=True), (text, filters)


def test_private_adapters_rank_for_their_owner_and_admins_only(db, level_by_level):
    level_by_level.setattr(relevance, "WINDOW_PER_ROW", 2)
    owner = Principal(db.owner_ids["owner0"], "owner0", False, ("read",))
    other = Principal(db.owner_ids["owner1"], "owner1", False, ("read",))
    admin = Principal(db.owner_ids["owner2"], "owner2", True, ("read",))
    seen = {}
    for who, principal in (("anonymous", None), ("owner", owner), ("other", other),
                           ("admin", admin)):
        query = Query(search="alpha beta", limit=6)
        seen[who] = every_page(db, principal, query, whole=False)
        assert seen[who] == every_page(db, principal, query, whole=True), who
    with db.session() as session:
        private = dict(session.execute(select(Adapter.id, Adapter.owner_id).where(
            Adapter.visibility == "private")).all())
    shown = {who: {id_ for id_ in ids if id_ in private} for who, ids in seen.items()}
    assert not shown["anonymous"] and not shown["other"] - {
        id_ for id_, owner_id in private.items() if owner_id == other.user_id}
    assert shown["owner"] and all(private[id_] == owner.user_id for id_ in shown["owner"])
    assert shown["admin"] > shown["owner"]
