"""Request bodies: the caller is known before a body is read, and JSON bodies stay small."""
from __future__ import annotations

import io
import json

import pytest

from tests.e2e.helpers import assert_problem, auth, publish

BASE = "/api/v1/adapters"
HUGE = 50 * 1024 * 1024


class CountingBody(io.RawIOBase):
    """A request body of `size` bytes that is made up as it is read, counting what was read."""

    def __init__(self, size: int, fill: bytes = b" ") -> None:
        self.size, self.fill, self.position, self.consumed = size, fill, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # the test client seeks to the end to learn the length

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset + (self.size if whence == 2 else 0)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        buffer[:count] = self.fill * count
        self.position += count
        self.consumed += count
        return count


def send(client, method: str, path: str, body: CountingBody, token: str | None = None, *,
         chunked: bool = False):
    """Send `body` as JSON, with its Content-Length or (chunked) without one."""
    # As a WSGI server hands over a chunked body: no length, a stream that ends by itself.
    chunked_environ = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked",
                       "CONTENT_LENGTH": ""}
    return client.open(path, method=method, input_stream=body, headers=auth(token),
                       content_type="application/json",
                       environ_overrides=chunked_environ if chunked else {})


def test_a_caller_without_write_access_is_refused_before_the_body_is_read(client, make_user,
                                                                         lora_dir):
    alice = make_user("alice")
    bob, reader = make_user("bob"), make_user("alice", scope="read")
    assert publish(client, alice, "alice/tiny", "1", lora_dir).status_code == 201
    version = f"{BASE}/alice/tiny/versions/1"
    probes = [("PATCH", f"{BASE}/alice/tiny", None, 401, "unauthorized"),
              ("PATCH", f"{BASE}/alice/tiny", bob, 403, "forbidden"),
              ("PATCH", f"{BASE}/alice/tiny", reader, 403, "forbidden"),
              ("PATCH", f"{BASE}/alice/tiny", "not-a-token", 401, "unauthorized"),
              ("POST", f"{version}/yank", None, 401, "unauthorized"),
              ("POST", f"{version}/yank", bob, 403, "forbidden"),
              ("POST", f"{version}/unyank", None, 401, "unauthorized"),
              ("POST", "/api/v1/merges", None, 401, "unauthorized"),
              ("POST", "/api/v1/merges", reader, 403, "forbidden"),
              ("POST", "/api/v1/merges/plan", "not-a-token", 401, "unauthorized"),
              ("POST", "/api/v1/merges/0123456789abcdef/publish", None, 401, "unauthorized"),
              ("DELETE", "/api/v1/merges/0123456789abcdef", None, 401, "unauthorized")]
    for method, path, token, status, code in probes:
        body = CountingBody(HUGE)
        assert_problem(send(client, method, path, body, token), status, code)
        assert body.consumed == 0, (method, path, body.consumed)
    assert client.get(f"{BASE}/alice/tiny").get_json()["task"] is None


def test_a_json_body_over_its_limit_is_413_from_its_length_unread(client, make_user,
                                                                  lora_dir):
    alice = make_user("alice")
    assert publish(client, alice, "alice/tiny", "1", lora_dir).status_code == 201
    for method, path, token in (("PATCH", f"{BASE}/alice/tiny", alice),
                                ("POST", "/api/v1/merges/plan", None)):
        body = CountingBody(2 * 1024 * 1024)
        problem = assert_problem(send(client, method, path, body, token), 413,
                                 "invalid_request")
        assert "LORASTACK_MAX_JSON_BYTES" in problem["detail"]
        assert body.consumed == 0


def test_a_json_body_without_a_length_is_cut_off_at_its_limit(settings, client, make_user,
                                                               lora_dir):
    alice = make_user("alice")
    assert publish(client, alice, "alice/tiny", "1", lora_dir).status_code == 201
    body = CountingBody(HUGE)
    assert_problem(send(client, "PATCH", f"{BASE}/alice/tiny", body, alice, chunked=True),
                   413, "invalid_request")
    # werkzeug reads in chunks: what it read is the limit and at most one chunk more.
    assert body.consumed <= settings.max_json_bytes + 1024 * 1024


def test_a_small_json_body_still_works_from_the_owner(client, make_user, lora_dir):
    alice = make_user("alice")
    assert publish(client, alice, "alice/tiny", "1", lora_dir).status_code == 201
    response = client.patch(f"{BASE}/alice/tiny", headers=auth(alice),
                            data=json.dumps({"task": "summarization"}),
                            content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["task"] == "summarization"


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_only_a_publish_takes_a_body_larger_than_the_json_limit(settings, make_user,
                                                                 lora_dir):
    from hub import create_app

    app = create_app(settings.with_overrides(max_json_bytes=1024))
    try:
        client = app.test_client()
        from hub.services.accounts import create_token, create_user

        with app.extensions["lorastack"].db.session() as session:
            create_user(session, "carol")
            carol = create_token(session, "carol", scope="write")
        response = publish(client, carol, "carol/tiny", "1", lora_dir,
                           metadata={"description": "d" * 2048})
        assert response.status_code == 201, response.get_data(as_text=True)
        patch = client.patch(f"{BASE}/carol/tiny", headers=auth(carol),
                             data=json.dumps({"description": "d" * 2048}),
                             content_type="application/json")
        assert_problem(patch, 413, "invalid_request")
    finally:
        app.extensions["lorastack"].close()


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_a_body_that_is_not_valid_multipart_is_reported_as_such(client, make_user):
    alice = make_user("alice")
    url = f"{BASE}/alice/tiny/versions"
    cut_short = b'--x\r\nContent-Disposition: form-data; name="version"\r\n\r\n1.0'
    for content_type, body in (("multipart/form-data", b"version=1"),
                               ("multipart/form-data; boundary=x", cut_short),
                               ("multipart/form-data; boundary=x", b"\x00garbage" * 100)):
        response = client.post(url, data=body, content_type=content_type, headers=auth(alice))
        problem = assert_problem(response, 400, "invalid_request")
        assert "not valid multipart" in problem["detail"], (body[:20], problem["detail"])


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b"version=1"),
    ("multipart/form-data; boundary=x", b"--x\r\nnot a header\r\n\r\n"),
])
def test_a_malformed_form_is_a_400_on_every_surface_that_reads_one(client, make_user,
                                                                   content_type, body):
    alice = make_user("alice")
    # The Hugging Face protocol's paths-info reads a form: its own error style, a 400.
    response = client.post("/api/models/alice/tiny/paths-info/main", data=body,
                           content_type=content_type, headers=auth(alice))
    assert response.status_code == 400, response.get_data(as_text=True)
    # An API route that takes no form: the form is never read, the route answers.
    response = client.post(f"{BASE}/alice/tiny/versions", data=body,
                           content_type=content_type, headers=auth(alice))
    problem = assert_problem(response, 400, "invalid_request")
    assert "not valid multipart/form-data" in problem["detail"]
