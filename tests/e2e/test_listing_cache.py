"""Listings kept in memory (hub.services.listings): every catalog write shows at once, in
every process and on every surface; only download counts may lag, by the cache's max age."""
from __future__ import annotations

import pytest

from hub.services.listings import ListingCache, catalog_generation
from tests.e2e.helpers import auth, publish

MODEL = "adapter_model.safetensors"


def hub_of(app):
    return app.extensions["lorastack"]


def generation(app) -> int:
    with hub_of(app).db.session() as session:
        return catalog_generation(session)


def api_names(client, query: str = "", token: str | None = None) -> list[str]:
    response = client.get(f"/api/v1/adapters{query}", headers=auth(token))
    assert response.status_code == 200, response.data
    return [item["id"] for item in response.get_json()["items"]]


def hf_names(client, query: str = "") -> list[str]:
    response = client.get(f"/api/models{query}")
    assert response.status_code == 200, response.data
    return [model["id"] for model in response.get_json()]


def web_lists(client, ref: str, query: str = "") -> bool:
    response = client.get(f"/{query}")
    assert response.status_code == 200
    return f'href="/{ref}"' in response.get_data(as_text=True)


@pytest.fixture
def second_app(settings):
    """A second app on the same database and store: another process's own listings."""
    from hub import create_app

    application = create_app(settings)
    application.testing = True
    yield application
    hub_of(application).close()


def test_every_catalog_write_moves_the_generation_and_a_download_does_not(
        app, client, make_user, lora_dir, other_lora_dir):
    token = make_user("alice")
    steps = [
        ("publish", lambda: publish(client, token, "alice/tiny", "1.0", lora_dir)),
        ("second version", lambda: publish(client, token, "alice/tiny", "1.1", other_lora_dir)),
        ("patch", lambda: client.patch("/api/v1/adapters/alice/tiny", headers=auth(token),
                                       json={"description": "Now described."})),
        ("tags", lambda: client.patch("/api/v1/adapters/alice/tiny", headers=auth(token),
                                      json={"tags": ["sql"]})),
        ("yank", lambda: client.post("/api/v1/adapters/alice/tiny/versions/1.1/yank",
                                     headers=auth(token), json={})),
        ("unyank", lambda: client.post("/api/v1/adapters/alice/tiny/versions/1.1/unyank",
                                       headers=auth(token))),
        ("private", lambda: client.patch("/api/v1/adapters/alice/tiny", headers=auth(token),
                                         json={"visibility": "private"})),
    ]
    for label, step in steps:
        before = generation(app)
        response = step()
        assert response.status_code in (200, 201), (label, response.data)
        assert generation(app) == before + 1, label
    before = generation(app)
    assert client.get(f"/api/v1/adapters/alice/tiny/versions/1.0/files/{MODEL}",
                      headers=auth(token)).status_code in (200, 302)
    assert client.get("/api/v1/adapters/alice/tiny", headers=auth(token)).get_json()[
        "downloads"] == 1
    assert generation(app) == before


def test_a_refused_write_does_not_move_the_generation(app, client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1.0", lora_dir)
    before = generation(app)
    refused = publish(client, token, "alice/tiny", "2.0", lora_dir, license="no-such-licence")
    assert refused.status_code == 400
    patched = client.patch("/api/v1/adapters/alice/tiny", headers=auth(token),
                           json={"visibility": "secret"})
    assert patched.status_code == 400
    assert generation(app) == before


def test_a_write_in_one_process_shows_in_the_next_listing_of_another(
        app, client, second_app, make_user, lora_dir, other_lora_dir):
    """Each app keeps its own listings, as each server process does; the writes go through
    the first, the listings are read from the second, warmed before every write."""
    reader = second_app.test_client()
    token = make_user("alice")
    publish(client, token, "alice/first", "1.0", lora_dir)
    assert api_names(reader) == ["alice/first"]
    assert hf_names(reader) == ["alice/first"]
    assert web_lists(reader, "alice/first")

    publish(client, token, "alice/second", "1.0", other_lora_dir)
    assert sorted(api_names(reader)) == ["alice/first", "alice/second"]
    assert sorted(hf_names(reader)) == ["alice/first", "alice/second"]
    assert web_lists(reader, "alice/second")

    assert api_names(reader, "?search=quasar") == []
    assert api_names(reader, "?tag=quasar") == []
    assert hf_names(reader, "?search=quasar") == []
    client.patch("/api/v1/adapters/alice/first", headers=auth(token),
                 json={"description": "A quasar helper.", "tags": ["quasar"]})
    assert api_names(reader, "?search=quasar") == ["alice/first"]
    assert api_names(reader, "?tag=quasar") == ["alice/first"]
    assert hf_names(reader, "?search=quasar") == ["alice/first"]

    detail = reader.get("/api/v1/adapters/alice/first").get_json()
    assert detail["description"] == "A quasar helper." and len(detail["versions"]) == 1
    publish(client, token, "alice/first", "2.0", other_lora_dir)
    detail = reader.get("/api/v1/adapters/alice/first").get_json()
    assert [version["version"] for version in detail["versions"]] == ["2.0", "1.0"]

    client.patch("/api/v1/adapters/alice/first", headers=auth(token),
                 json={"visibility": "private"})
    assert reader.get("/api/v1/adapters/alice/first").status_code == 404
    assert reader.get("/api/v1/adapters/alice/first", headers=auth(token)).status_code == 200
    assert api_names(reader) == ["alice/second"]
    assert hf_names(reader) == ["alice/second"]
    assert web_lists(reader, "alice/second") and not web_lists(reader, "alice/first")
    assert set(api_names(reader, token=token)) == {"alice/first", "alice/second"}

    before = api_names(reader, "?search=first", token=token)
    client.post("/api/v1/adapters/alice/first/versions/2.0/yank", headers=auth(token), json={})
    items = reader.get("/api/v1/adapters?search=first", headers=auth(token)).get_json()["items"]
    assert before == ["alice/first"] and items[0]["latest_version"] == "1.0"


def test_each_audience_has_its_own_listings(app, client, make_user, lora_dir, other_lora_dir):
    alice, bob = make_user("alice"), make_user("bob")
    admin = make_user("root", admin=True)
    publish(client, alice, "alice/open", "1.0", lora_dir)
    publish(client, alice, "alice/hidden", "1.0", other_lora_dir,
            metadata={"visibility": "private"})
    everyone = {"alice/open", "alice/hidden"}
    # The owner's listing is computed first and kept; nobody else is served it.
    assert set(api_names(client, token=alice)) == everyone
    assert api_names(client) == ["alice/open"]
    assert api_names(client, token=bob) == ["alice/open"]
    assert set(api_names(client, token=admin)) == everyone
    assert hf_names(client) == ["alice/open"]
    assert set(hf_names_as(client, alice)) == everyone
    assert hub_of(app).listings.hits == 0
    assert api_names(client) == ["alice/open"]
    assert hub_of(app).listings.hits == 1
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'lorastack_listing_cache_requests_total{result="hit"} 1.0' in metrics
    assert 'lorastack_listing_cache_requests_total{result="miss"} 6.0' in metrics


def hf_names_as(client, token: str) -> list[str]:
    return [model["id"] for model in client.get("/api/models", headers=auth(token)).get_json()]


def test_download_counts_in_a_listing_are_at_most_max_age_old(app, client, make_user, lora_dir):
    now = [1000.0]
    hub_of(app).listings = ListingCache(max_age=10, clock=lambda: now[0])
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1.0", lora_dir)

    def listed_downloads() -> int:
        return client.get("/api/v1/adapters").get_json()["items"][0]["downloads"]

    assert listed_downloads() == 0
    assert client.get("/api/v1/adapters/alice/tiny").get_json()["downloads"] == 0
    client.get(f"/api/v1/adapters/alice/tiny/versions/1.0/files/{MODEL}")
    # The adapter's own view is kept too, but its count is read for every request.
    assert client.get("/api/v1/adapters/alice/tiny").get_json()["downloads"] == 1
    assert hub_of(app).listings.hits == 1
    now[0] += 9.9
    assert listed_downloads() == 0  # the kept listing, not yet max_age old
    now[0] += 0.2
    assert listed_downloads() == 1


def test_cache_seconds_zero_computes_every_listing(settings, make_user):
    from hub import create_app

    application = create_app(settings.with_overrides(catalog_cache_seconds=0))
    try:
        reader = application.test_client()
        for _ in range(3):
            assert api_names(reader) == []
        assert hub_of(application).listings.hits == 0
        assert hub_of(application).listings.misses == 0
    finally:
        hub_of(application).close()


def test_least_recently_used_listings_go_first(app, client):
    listings = hub_of(app).listings = ListingCache(max_age=60, size=2)
    for query in ("?sort=name", "?sort=created", "?sort=name", "?sort=updated"):
        api_names(client, query)
    assert (listings.hits, listings.misses) == (1, 3)
    api_names(client, "?sort=name")      # kept: used more recently than ?sort=created
    api_names(client, "?sort=created")   # gone: the least recently used of the three
    assert (listings.hits, listings.misses) == (2, 4)


def test_a_kept_listing_is_the_same_response_as_a_computed_one(app, client, make_user,
                                                                 lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1.0", lora_dir)
    for path in ("/api/v1/adapters?search=tiny", "/api/models?search=tiny"):
        computed, kept = client.get(path), client.get(path)
        assert kept.data == computed.data and kept.mimetype == "application/json"
        # The same JSON text as every other response of the hub (compact, one line).
        assert computed.data == app.json.response(computed.get_json()).get_data()
    assert hub_of(app).listings.hits == 2


def test_searches_that_differ_only_in_case_or_punctuation_share_one_listing(app, client):
    listings = hub_of(app).listings
    for text in ("Tiny adapter", "tiny,  ADAPTER!", "tiny adapter tiny"):
        assert api_names(client, f"?search={text}") == []
    assert (listings.hits, listings.misses) == (2, 1)


def test_listings_are_kept_within_a_byte_budget(app):
    from hub.services import listings as module

    listings = ListingCache(max_age=60, budget=10_000)
    with hub_of(app).db.session() as session:
        for n in range(5):  # each about 3 KB: the oldest go first past 10 KB
            listings.get(session, None, ("page", n), lambda: "x" * 3000)
        assert listings.kept_bytes <= 10_000
        assert listings.get(session, None, ("page", 4), lambda: "new") == "x" * 3000
        assert listings.get(session, None, ("page", 0), lambda: "new") == "new"
        # Heavier than MAX_ENTRY: served, never kept (it would push out many others).
        big = ListingCache(max_age=60)
        huge = "y" * (module.MAX_ENTRY + 1)
        assert big.get(session, None, "huge", lambda: huge) is huge
        assert big.kept_bytes == 0
        assert big.get(session, None, "huge", lambda: "again") == "again"


def test_a_savepoint_neither_loses_nor_doubles_the_generation_move(app):
    from hub.models import User

    db = hub_of(app).db
    before = generation(app)
    with db.session() as session:
        session.add(User(name="alice"))
        session.flush()
        nested = session.begin_nested()
        session.add(User(name="bob"))
        session.flush()
        nested.rollback()  # bob is gone; alice, flushed before, is still written
        with session.begin_nested():  # released: not yet the transaction's end
            session.add(User(name="carol"))
    assert generation(app) == before + 1
