"""The caller's own tokens over the API: listed by prefix, revoked one by one."""
from __future__ import annotations

from tests.e2e.helpers import assert_problem, auth


def test_tokens_lists_only_the_callers_live_tokens_and_never_the_token(client, make_user):
    first = make_user("alice")
    second = make_user("alice", scope="read")
    make_user("bob")
    assert client.get("/api/v1/whoami", headers=auth(first)).status_code == 200
    items = client.get("/api/v1/tokens", headers=auth(second)).get_json()["items"]
    assert [(item["prefix"], item["scope"]) for item in items] == [
        (first[:12], "write"), (second[:12], "read")]
    assert items[0]["last_used_at"] is not None and items[0]["revoked"] is False
    assert all(first not in str(item) and second not in str(item) for item in items)
    assert_problem(client.get("/api/v1/tokens"), 401, "unauthorized")


def test_revoking_a_token_makes_it_401_at_once_and_leaves_the_others(client, make_user):
    token = make_user("alice")
    spare = make_user("alice")
    body = client.delete(f"/api/v1/tokens/{spare[:12]}", headers=auth(token)).get_json()
    assert body["prefix"] == spare[:12] and body["revoked"] is True
    assert_problem(client.get("/api/v1/whoami", headers=auth(spare)), 401, "unauthorized")
    assert client.get("/api/v1/whoami", headers=auth(token)).status_code == 200
    listed = client.get("/api/v1/tokens", headers=auth(token)).get_json()["items"]
    assert [item["prefix"] for item in listed] == [token[:12]]
    # A token may revoke itself; it is refused from the next request on.
    assert client.delete(f"/api/v1/tokens/{token[:12]}", headers=auth(token)).status_code == 200
    assert_problem(client.get("/api/v1/tokens", headers=auth(token)), 401, "unauthorized")


def test_no_one_revokes_another_users_token_and_a_read_token_revokes_nothing(client,
                                                                             make_user):
    alice = make_user("alice")
    alice_read = make_user("alice", scope="read")
    bob = make_user("bob")
    assert_problem(client.delete(f"/api/v1/tokens/{alice[:12]}", headers=auth(bob)),
                   404, "not_found")
    assert_problem(client.delete(f"/api/v1/tokens/{alice[:12]}", headers=auth(alice_read)),
                   403, "forbidden")
    assert_problem(client.delete("/api/v1/tokens/lst_nothing", headers=auth(alice)),
                   404, "not_found")
    assert client.get("/api/v1/whoami", headers=auth(alice)).status_code == 200
