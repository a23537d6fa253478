"""An adapter's owner changes it from its page (yank, unyank, description, tags,
visibility) and downloads its private files there, through Flask's client on both backends.
The rules are the API's: same services, same 404 for what a viewer cannot see."""
from __future__ import annotations

import re

import pytest

from tests.e2e.helpers import auth, publish

MODEL = "adapter_model.safetensors"


@pytest.fixture
def adapters(client, make_user, lora_dir):
    """alice/chatty 1.0 and 1.1 (public), alice/hidden 1.0 (private); bob and an admin."""
    alice = make_user("alice")
    bob = make_user("bob")
    make_user("root", admin=True)
    for version in ("1.0", "1.1"):
        assert publish(client, alice, "alice/chatty", version, lora_dir,
                       metadata={"tags": ["chat"]}).status_code == 201
    assert publish(client, alice, "alice/hidden", "1.0", lora_dir,
                   metadata={"visibility": "private"}).status_code == 201
    return {"alice": alice, "bob": bob}


def page(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response.get_data(as_text=True)


def csrf(client, path: str = "/alice/chatty") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page(client, path)).group(1)


def api_version(client, token: str, ref: str, label: str) -> dict:
    return client.get(f"/api/v1/adapters/{ref}/versions/{label}", headers=auth(token)).get_json()


def test_the_owner_yanks_a_version_with_a_reason_and_unyanks_it(client, sign_in, adapters):
    sign_in("alice")
    token = csrf(client)
    done = client.post("/alice/chatty/v/1.1/yank",
                       data={"reason": "broken on fp16", "csrf_token": token})
    assert done.status_code == 303 and done.headers["Location"].endswith("/alice/chatty/v/1.1")
    shown = page(client, "/alice/chatty/v/1.1")
    assert "Yanked 1.1" in shown and "broken on fp16" in shown and "Unyank 1.1" in shown
    body = api_version(client, adapters["alice"], "alice/chatty", "1.1")
    assert body["yanked"] is True and body["yank_reason"] == "broken on fp16"
    assert api_version(client, adapters["alice"], "alice/chatty", "latest")["version"] == "1.0"

    assert client.post("/alice/chatty/v/1.1/unyank",
                       data={"csrf_token": token}).status_code == 303
    assert api_version(client, adapters["alice"], "alice/chatty", "latest")["version"] == "1.1"
    assert "Yank 1.1" in page(client, "/alice/chatty/v/1.1")


def test_the_owner_changes_description_tags_and_visibility(client, sign_in, adapters):
    sign_in("alice")
    done = client.post("/alice/chatty/edit", data={
        "description": "Now with docs", "tags": "chat, docs  python",
        "visibility": "private", "csrf_token": csrf(client)})
    assert done.status_code == 303
    body = client.get("/api/v1/adapters/alice/chatty", headers=auth(adapters["alice"])).get_json()
    assert (body["description"], body["tags"], body["visibility"]) == (
        "Now with docs", ["chat", "docs", "python"], "private")
    sign_in(None)
    assert client.get("/alice/chatty").status_code == 404  # private now


def test_a_value_the_service_refuses_is_shown_on_the_page(client, sign_in, adapters):
    sign_in("alice")
    token = csrf(client)
    refused = client.post("/alice/chatty/edit", data={
        "description": "x", "tags": "", "visibility": "secret", "csrf_token": token})
    assert refused.status_code == 400 and refused.mimetype == "text/html"
    assert "&#39;visibility&#39; must be &#39;public&#39; or &#39;private&#39;" in \
        refused.get_data(as_text=True)
    too_long = client.post("/alice/chatty/v/1.0/yank",
                           data={"reason": "r" * 1001, "csrf_token": token})
    assert too_long.status_code == 400 and "at most 1000" in too_long.get_data(as_text=True)
    assert api_version(client, adapters["alice"], "alice/chatty", "1.0")["yanked"] is False


def test_a_post_without_the_csrf_token_changes_nothing(client, sign_in, adapters):
    sign_in("alice")
    csrf(client)  # the session has a token; the form below does not send it
    refused = client.post("/alice/chatty/v/1.0/yank", data={"reason": "forged"})
    assert refused.status_code == 403 and refused.mimetype == "text/html"
    refused = client.post("/alice/chatty/edit", data={"visibility": "private",
                                                       "csrf_token": "not-the-token"})
    assert refused.status_code == 403
    assert api_version(client, adapters["alice"], "alice/chatty", "1.0")["yanked"] is False
    assert client.get("/api/v1/adapters/alice/chatty").status_code == 200  # still public


def test_another_user_sees_no_controls_and_is_refused_as_the_api_refuses(client, sign_in,
                                                                        adapters):
    sign_in("bob")
    shown = page(client, "/alice/chatty")
    assert "Manage" not in shown and "/yank" not in shown and "/edit" not in shown
    token = csrf(client)
    assert client.post("/alice/chatty/v/1.0/yank", data={"csrf_token": token}).status_code == 403
    assert client.post("/alice/chatty/edit", data={"visibility": "private",
                                                    "csrf_token": token}).status_code == 403
    # A private adapter is not there at all for bob: 404, as the API answers him.
    assert client.post("/alice/hidden/v/1.0/yank", data={"csrf_token": token}).status_code == 404
    assert client.post("/api/v1/adapters/alice/hidden/versions/1.0/yank",
                       headers=auth(adapters["bob"])).status_code == 404
    assert client.post("/api/v1/adapters/alice/chatty/versions/1.0/yank",
                       headers=auth(adapters["bob"])).status_code == 403
    assert api_version(client, adapters["alice"], "alice/chatty", "1.0")["yanked"] is False
    assert api_version(client, adapters["alice"], "alice/hidden", "1.0")["yanked"] is False


def test_an_anonymous_post_is_sent_to_sign_in(client, sign_in, adapters):
    token = csrf(client, "/signin")
    sent = client.post("/alice/chatty/v/1.0/yank", data={"csrf_token": token})
    assert sent.status_code == 303 and "/signin?next=" in sent.headers["Location"]
    assert "Manage" not in page(client, "/alice/chatty")


def test_an_admin_may_yank_anyone_s_version(client, sign_in, adapters):
    sign_in("root")
    assert "Manage" in page(client, "/alice/hidden")
    assert client.post("/alice/hidden/v/1.0/yank",
                       data={"reason": "licence problem",
                             "csrf_token": csrf(client, "/alice/hidden")}).status_code == 303
    assert api_version(client, adapters["alice"], "alice/hidden", "1.0")["yanked"] is True


# --- private files from the page ----------------------------------------------------------

def file_links(html: str) -> dict[str, str]:
    return {path: url for url, path in re.findall(r'<a href="([^"]+)" download="([^"]+)">', html)}


def downloads_of(client, token: str, ref: str) -> int:
    return client.get(f"/api/v1/adapters/{ref}", headers=auth(token)).get_json()["downloads"]


def fetched(client, url: str) -> tuple[int, bytes, dict]:
    """GET `url` with the client's cookie, following S3's redirect with a real request."""
    import requests

    response = client.get(url)
    if response.status_code == 302:
        got = requests.get(response.headers["Location"], timeout=30)
        return got.status_code, got.content, response.headers
    return response.status_code, response.data, response.headers


def test_the_owner_downloads_a_private_file_from_its_page_counted_once(client, sign_in,
                                                                       adapters, lora_dir):
    sign_in("alice")
    links = file_links(page(client, "/alice/hidden"))
    assert links[MODEL] == f"/alice/hidden/v/1.0/files/{MODEL}"
    status, body, headers = fetched(client, links[MODEL])
    assert status == 200 and body == (lora_dir / MODEL).read_bytes()
    assert headers["Cache-Control"] == "private, no-store"  # on S3, the redirect's too
    assert downloads_of(client, adapters["alice"], "alice/hidden") == 1
    status, body, _ = fetched(client, links["adapter_config.json"])
    assert status == 200 and body == (lora_dir / "adapter_config.json").read_bytes()
    assert client.head(links[MODEL]).status_code in (200, 302)  # a HEAD counts nothing
    assert downloads_of(client, adapters["alice"], "alice/hidden") == 1


def test_a_private_file_is_not_there_for_anyone_else(client, sign_in, adapters):
    url = f"/alice/hidden/v/1.0/files/{MODEL}"
    for who in (None, "bob"):
        sign_in(who)
        refused = client.get(url)
        assert refused.status_code == 404 and refused.mimetype == "text/html"
    assert client.get(f"/api/v1/adapters/alice/hidden/versions/1.0/files/{MODEL}",
                      headers=auth(adapters["bob"])).status_code == 404
    assert downloads_of(client, adapters["alice"], "alice/hidden") == 0


def test_public_files_keep_the_api_links_and_the_page_route_serves_them_too(client, sign_in,
                                                                          adapters, lora_dir):
    links = file_links(page(client, "/alice/chatty"))
    assert links[MODEL] == f"/api/v1/adapters/alice/chatty/versions/1.1/files/{MODEL}"
    sign_in("bob")
    status, body, headers = fetched(client, f"/alice/chatty/v/1.1/files/{MODEL}")
    assert status == 200 and body == (lora_dir / MODEL).read_bytes()
    assert downloads_of(client, adapters["alice"], "alice/chatty") == 1
    # The page route answers a browser that may carry a refreshed sign-in cookie: no
    # shared cache keeps it, unlike the API's URL of the same file.
    assert headers["Cache-Control"].startswith("private")
    assert "public" not in headers["Cache-Control"]
