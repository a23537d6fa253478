"""Expired merge results: 410 on their downloads, and `lorastack gc` removes the blobs that
no published version and no unexpired merge still names (the cache shares result blobs)."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from hub.models import Merge, VersionFile, utcnow
from hub.storage import blob_key
from tests.e2e.helpers import assert_problem, auth, publish
from tests.e2e.test_cli import run, server_env
from tests.e2e.test_merge_service import fetch, spec, wait

FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", "merge_report.json")


@pytest.fixture
def tokens(client, make_user, lora_dir, other_lora_dir) -> tuple[str, str]:
    alice = make_user("alice")
    assert publish(client, alice, "alice/a", "1.0", lora_dir).status_code == 201
    assert publish(client, alice, "alice/b", "2.0", other_lora_dir).status_code == 201
    return alice, make_user("bob")


def merged(client, token: str, rank: int) -> dict:
    """A succeeded merge of alice/a and alice/b at `rank` (a cache hit for a second caller)."""
    response = client.post("/api/v1/merges", headers=auth(token),
                           json=spec(("alice/a", "1.0", 0.5), ("alice/b", "2.0", 0.5),
                                     rank=rank))
    assert response.status_code in (200, 202), response.get_json()
    done = wait(client, token, response.get_json()["id"])
    assert done["status"] == "succeeded", done
    return done


def keys(merge: dict) -> set[str]:
    """Every blob a merge's view names: its files and its archive."""
    return {blob_key(f["sha256"]) for f in merge["files"]} | {
        blob_key(merge["archive"]["sha256"])}


def expire(app, *merge_ids: str) -> None:
    """Move the merges' expiry into the past, as time would."""
    with app.extensions["lorastack"].db.session() as session:
        session.execute(update(Merge).where(Merge.id.in_(merge_ids))
                        .values(expires_at=utcnow() - timedelta(minutes=1)))


def downloads(client, token: str, merge_id: str) -> set[int]:
    """The statuses of every file and of the archive of a merge."""
    urls = [f"/api/v1/merges/{merge_id}/files/{path}" for path in FILES]
    return {fetch(client, url, token)[0] for url in urls + [f"/api/v1/merges/{merge_id}/archive"]}


def test_an_expired_merge_answers_410_and_gc_keeps_blobs_another_merge_shares(
        settings, app, client, tokens):
    alice, bob = tokens
    mine = merged(client, alice, rank=2)
    shared = merged(client, bob, rank=2)  # a cache hit: the same blobs, its own expiry
    assert shared["id"] != mine["id"] and keys(shared) == keys(mine)
    expire(app, mine["id"])
    for path in FILES:
        assert_problem(client.get(f"/api/v1/merges/{mine['id']}/files/{path}",
                                  headers=auth(alice)), 410, "merge_expired")
    assert_problem(client.get(f"/api/v1/merges/{mine['id']}/archive", headers=auth(alice)),
                   410, "merge_expired")
    assert client.get(f"/api/v1/merges/{mine['id']}", headers=auth(alice)).get_json()[
        "expired"] is True

    gc = run(["gc", "--grace-hours", "0"], server_env(settings))
    assert f"expired merge {mine['id']}" in gc.output
    store = app.extensions["lorastack"].store
    assert all(store.exists(key) for key in keys(mine))
    assert downloads(client, bob, shared["id"]) == {200}
    assert downloads(client, alice, mine["id"]) == {410}


def test_gc_removes_an_expired_results_blobs_but_not_what_a_published_version_names(
        settings, app, client, tokens):
    alice, _ = tokens
    kept = merged(client, alice, rank=4)
    published = client.post(f"/api/v1/merges/{kept['id']}/publish", headers=auth(alice),
                            json={"adapter": "alice/mix", "version": "1.0",
                                  "license_link": "https://example.com/terms"})
    assert published.status_code == 201, published.get_json()
    gone = merged(client, alice, rank=2)
    expire(app, gone["id"])
    store = app.extensions["lorastack"].store
    hub = app.extensions["lorastack"]
    with hub.db.session() as session:
        versions = set(session.scalars(select(VersionFile.blob_key)))
    env = server_env(settings)

    dry = run(["gc", "--grace-hours", "0", "--dry-run"], env)
    assert f"would expire merge {gone['id']}" in dry.output
    unshared = keys(gone) - keys(kept)
    assert unshared and all(f"would remove {key}" in dry.output for key in unshared)
    assert all(store.exists(key) for key in keys(gone))

    run(["gc", "--grace-hours", "0"], env)
    assert not any(store.exists(key) for key in unshared)
    assert all(store.exists(key) for key in keys(kept) | versions)
    # A published merge never expires: it and its version still serve.
    shown = client.get(f"/api/v1/merges/{kept['id']}", headers=auth(alice)).get_json()
    assert shown["expires_at"] is None and shown["expired"] is False
    assert downloads(client, alice, kept["id"]) == {200}
    version_file = client.get("/api/v1/adapters/alice/mix/versions/1.0/files/"
                              "adapter_model.safetensors")
    assert version_file.status_code in (200, 302)
    # The expired merge stays expired; the same spec sent again runs again and serves.
    assert downloads(client, alice, gone["id"]) == {410}
    again = merged(client, alice, rank=2)
    assert again["id"] != gone["id"] and downloads(client, alice, again["id"]) == {200}


def test_a_cache_hit_does_not_share_a_result_whose_blobs_gc_took_meanwhile(
        app, client, tokens, monkeypatch):
    from hub.services import merges as merge_service
    from hub.services.maintenance import collect_garbage

    alice, bob = tokens
    first = merged(client, alice, rank=2)
    hub = app.extensions["lorastack"]
    lock_blobs = merge_service.lock_blobs
    removed: list[str] = []

    def expire_and_gc_before_the_locks(session, keys):
        # The shared merge expires after the cache query, and gc takes its blobs first.
        expire(app, first["id"])
        gc = threading.Thread(target=lambda: removed.extend(
            collect_garbage(hub.db, hub.store, grace_hours=0)))
        gc.start()
        gc.join(60)
        lock_blobs(session, keys)

    monkeypatch.setattr(merge_service, "lock_blobs", expire_and_gc_before_the_locks)
    response = client.post("/api/v1/merges", headers=auth(bob),
                           json=spec(("alice/a", "1.0", 0.5), ("alice/b", "2.0", 0.5), rank=2))
    monkeypatch.undo()
    assert response.status_code == 202 and keys(first) <= set(removed)
    # Not a copy of the vanished result: a merge of its own, which stores the blobs again.
    assert response.get_json()["status"] in ("queued", "running")
    again = wait(client, bob, response.get_json()["id"])
    weights = {m["id"]: {f["sha256"] for f in m["files"] if f["path"].endswith(".safetensors")}
               for m in (first, again)}
    assert again["status"] == "succeeded" and weights[again["id"]] == weights[first["id"]]
    assert downloads(client, bob, again["id"]) == {200}
