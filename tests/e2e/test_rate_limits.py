"""Rate limits: failed authentications per address and writes per token are 429 rate_limited."""
from __future__ import annotations

import os

import pytest

from tests.conftest import need_service
from tests.e2e.helpers import assert_problem, auth, publish
from tests.support.processes import REDIS_SERVER, RedisServer

BASE = "/api/v1/adapters"
FAILURES, WRITES = 20, 5
ATTACKER, NEIGHBOUR = {"REMOTE_ADDR": "203.0.113.7"}, {"REMOTE_ADDR": "198.51.100.9"}


@pytest.fixture
def settings(settings):
    """The hub on both backends, with limits small enough to reach in a few requests."""
    return settings.with_overrides(auth_failures_per_minute=FAILURES, writes_per_minute=WRITES)


def bad_tokens(client, count: int, environ: dict) -> list:
    return [client.get("/api/v1/whoami", headers=auth(f"lsk_wrong{i}"), environ_base=environ)
            for i in range(count)]


def assert_rate_limited(response) -> None:
    body = assert_problem(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60, dict(response.headers)
    assert body["detail"]


def test_bad_tokens_past_the_limit_are_429_and_block_even_a_valid_token_there(client,
                                                                              make_user):
    token = make_user("alice")
    responses = bad_tokens(client, 25, ATTACKER)
    assert [r.status_code for r in responses[:FAILURES]] == [401] * FAILURES
    for response in responses[FAILURES:]:
        assert_rate_limited(response)
    # A guessed token that happens to be right must not be told so from that address.
    assert_rate_limited(client.get("/api/v1/whoami", headers=auth(token),
                                   environ_base=ATTACKER))


def test_another_address_is_unaffected_by_one_address_failures(client, make_user):
    token = make_user("alice")
    bad_tokens(client, 25, ATTACKER)
    response = client.get("/api/v1/whoami", headers=auth(token), environ_base=NEIGHBOUR)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert bad_tokens(client, 1, NEIGHBOUR)[0].status_code == 401


def test_anonymous_reads_from_a_blocked_address_still_work(client):
    bad_tokens(client, 25, ATTACKER)
    assert client.get(BASE, environ_base=ATTACKER).status_code == 200


def test_writes_past_the_per_token_limit_are_429_while_reads_still_work(client, make_user,
                                                                       lora_dir):
    token, other = make_user("alice"), make_user("bob")
    assert publish(client, token, "alice/tiny", "1", lora_dir).status_code == 201
    patches = [client.patch(f"{BASE}/alice/tiny", json={"task": f"t{i}"}, headers=auth(token))
               for i in range(WRITES)]
    assert [r.status_code for r in patches[:WRITES - 1]] == [200] * (WRITES - 1)
    assert_rate_limited(patches[-1])
    assert_rate_limited(client.post(f"{BASE}/alice/tiny/versions/1/yank", json={},
                                    headers=auth(token)))
    assert client.get(f"{BASE}/alice/tiny", headers=auth(token)).get_json()["task"] == \
        f"t{WRITES - 2}"
    assert client.get("/api/v1/whoami", headers=auth(token)).status_code == 200
    # The limit is the token's: another caller writes on.
    assert publish(client, other, "bob/tiny", "1", lora_dir).status_code == 201


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_limits_of_zero_turn_them_off(settings, make_user, lora_dir):
    from hub import create_app

    app = create_app(settings.with_overrides(auth_failures_per_minute=0, writes_per_minute=0))
    client = app.test_client()
    token = make_user("alice")
    assert {r.status_code for r in bad_tokens(client, FAILURES + 5, ATTACKER)} == {401}
    assert publish(client, token, "alice/tiny", "1", lora_dir).status_code == 201
    assert {client.patch(f"{BASE}/alice/tiny", json={"task": "x"}, headers=auth(token)
                         ).status_code for _ in range(WRITES * 2)} == {200}


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_processes_sharing_a_redis_store_share_the_counts(settings, make_user, tmp_path):
    from hub import create_app

    if not os.access(REDIS_SERVER, os.X_OK):
        need_service("redis-server", FileNotFoundError(REDIS_SERVER))
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        shared = settings.with_overrides(ratelimit_storage_url=redis.url)
        first, second = create_app(shared).test_client(), create_app(shared).test_client()
        token = make_user("alice")
        bad_tokens(first, FAILURES, ATTACKER)
        assert_rate_limited(second.get("/api/v1/whoami", headers=auth(token),
                                       environ_base=ATTACKER))
    finally:
        redis.stop()


def test_an_unreachable_limit_store_lets_requests_through(settings, make_user):
    from hub import create_app
    from tests.support.moto_server import free_port

    token = make_user("alice")
    app = create_app(settings.with_overrides(
        ratelimit_storage_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        client = app.test_client()
        for _ in range(3):
            assert client.get("/api/v1/whoami",
                              headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert client.get("/api/v1/whoami",
                              headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        app.extensions["lorastack"].close()


PROXY = {"REMOTE_ADDR": "10.0.0.2"}


def _bad_tokens_via(client, count: int, forwarded_for: str) -> list[int]:
    return [client.get("/api/v1/whoami", headers={**auth(f"lsk_wrong{i}"),
                                                  "X-Forwarded-For": forwarded_for},
                       environ_base=PROXY).status_code for i in range(count)]


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_count(settings):
    from hub import create_app

    client = create_app(settings.with_overrides(trusted_proxies=1)).test_client()
    assert _bad_tokens_via(client, FAILURES + 1, "203.0.113.7")[-1] == 429
    # Another caller behind the same proxy is not blocked by the first one's failures.
    assert _bad_tokens_via(client, 1, "198.51.100.9") == [401]
    # The proxy appends the address it saw: what a client wrote before it is not believed.
    assert _bad_tokens_via(client, 1, "198.51.100.77, 203.0.113.7") == [429]


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_without_trusted_proxies_x_forwarded_for_is_ignored(settings):
    from hub import create_app

    client = create_app(settings).test_client()
    statuses = [_bad_tokens_via(client, 1, f"192.0.2.{i}")[0] for i in range(FAILURES + 1)]
    assert statuses[-1] == 429, statuses  # one count: the peer's, whatever the header says


def test_a_signed_in_users_writes_on_the_pages_count_against_the_same_limit(app, make_user):
    import re

    from hub.services.accounts import set_password

    browser = {"Accept": "text/html"}

    def signed_in(name: str):
        make_user(name)
        with app.extensions["lorastack"].db.session() as session:
            set_password(session, name, "correct horse battery")
        client = app.test_client()

        def csrf() -> str:
            page = client.get("/settings/tokens", headers=browser).get_data(as_text=True)
            return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

        page = client.get("/signin", headers=browser).get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        assert client.post("/signin", headers=browser, data={
            "name": name, "password": "correct horse battery", "csrf_token": token,
        }).status_code == 303
        return client, csrf()

    alice, csrf = signed_in("alice")
    created = [alice.post("/settings/tokens", headers=browser,
                          data={"scope": "read", "csrf_token": csrf}) for _ in range(WRITES + 1)]
    assert [r.status_code for r in created[:WRITES]] == [201] * WRITES
    refused = created[-1]
    assert refused.status_code == 429 and refused.mimetype == "text/html"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60, dict(refused.headers)
    assert "Too many" in refused.get_data(as_text=True)
    # Reading still works; the limit is alice's: bob writes on.
    assert alice.get("/settings/tokens", headers=browser).status_code == 200
    bob, bob_csrf = signed_in("bob")
    assert bob.post("/settings/tokens", headers=browser,
                    data={"scope": "read", "csrf_token": bob_csrf}).status_code == 201
