"""The Hugging Face write surface through Flask's client: version labels from the card,
create_repo's races and refusals, the commit body's temporary files, error shapes."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from tests.e2e.helpers import auth


def _commit_body(files: dict[str, bytes]) -> bytes:
    lines = [{"key": "header", "value": {"summary": "test", "description": ""}}]
    lines += [{"key": "file", "value": {"content": base64.b64encode(data).decode(),
                                        "path": path, "encoding": "base64"}}
              for path, data in files.items()]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _commit(client, token, ref: str, files: dict[str, bytes]):
    return client.post(f"/api/models/{ref}/commit/main", data=_commit_body(files),
                       headers={**auth(token), "Content-Type": "application/x-ndjson"})


def _adapter(lora_dir: Path, card: str) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in lora_dir.iterdir() if p.is_file()
             and p.name != "README.md"}
    return {**files, "README.md": card.encode()}


@pytest.mark.parametrize("written, label", [
    ("1.10", "1.10"), ("012", "012"), ("2", "2"), ("1.5", "1.5"), ('"1.10"', "1.10"),
    ("0.10.0", "0.10.0"),
])
def test_card_version_is_the_label_as_written_not_as_yaml_types_it(
        client, make_user, lora_dir, written, label):
    token = make_user("alice")
    card = f"---\nlicense: apache-2.0\nversion: {written}\n---\n# A LoRA\n"
    response = _commit(client, token, "alice/style", _adapter(lora_dir, card))
    assert response.status_code == 200, response.get_data(as_text=True)
    versions = client.get("/api/v1/adapters/alice/style").get_json()["versions"]
    assert [v["version"] for v in versions] == [label]


def test_create_repo_racing_another_answers_the_existing_adapter(app, make_user):
    from sqlalchemy import event

    from hub.services.accounts import authenticate
    from hub.services.commit_publish import create_adapter

    token = make_user("alice")
    db = app.extensions["lorastack"].db
    with db.session() as session:
        principal = authenticate(session, token)

    raced = []

    def _the_other_one_commits_first(session, *_):
        if raced:
            return
        raced.append(True)
        with db.session() as other:
            assert create_adapter(other, principal, "alice", "style", False)[1] is True

    with db.session() as session:
        event.listen(session, "before_flush", _the_other_one_commits_first)
        adapter, created = create_adapter(session, principal, "alice", "style", False)
        assert (created, adapter.name, adapter.owner.name) == (False, "style", "alice")


def test_anonymous_create_repo_is_asked_for_a_token(client):
    response = client.post("/api/repos/create", json={"name": "style", "type": "model"})
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["code"] == "unauthorized"


def _assert_hub_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"  # the Hub's shape, not problem+json
    assert response.headers["X-Error-Message"]
    return response.get_json()


def test_a_method_an_hf_route_does_not_take_answers_in_the_hubs_error_shape(client):
    body = _assert_hub_error(client.put("/api/repos/create", json={}), 405)
    assert body["code"] == "method_not_allowed"
    assert "POST" in client.put("/api/repos/create", json={}).headers["Allow"]


def test_a_commit_over_the_upload_limit_answers_in_the_hubs_error_shape(
        settings, make_user, lora_dir):
    from dataclasses import replace

    from hub import create_app

    app = create_app(replace(settings, max_upload_bytes=4096))
    try:
        from hub.services.accounts import create_token, create_user

        with app.extensions["lorastack"].db.session() as session:
            create_user(session, "bob")
            token = create_token(session, "bob")
        body = _commit_body(_adapter(lora_dir, "---\nlicense: mit\n---\n"))
        # Chunked, with no Content-Length: the limit trips while the body streams in.
        response = app.test_client().post(
            "/api/models/bob/style/commit/main", input_stream=io.BytesIO(body),
            headers={**auth(token), "Content-Type": "application/x-ndjson",
                     "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True})
        assert "LORASTACK_MAX_UPLOAD_BYTES" in response.get_json()["error"]
        assert _assert_hub_error(response, 413)["code"] == "file_too_large"
    finally:
        app.extensions["lorastack"].close()


def test_model_info_without_its_readme_blob_has_no_card_data(app, client, make_user, lora_dir):
    import hashlib

    from hub.storage.base import blob_key

    token = make_user("alice")
    card = "---\nlicense: apache-2.0\ntags: [style]\n---\n# A LoRA\n"
    assert _commit(client, token, "alice/style", _adapter(lora_dir, card)).status_code == 200
    assert client.get("/api/models/alice/style").get_json()["cardData"]["tags"] == ["style"]
    app.extensions["lorastack"].store.delete(blob_key(hashlib.sha256(card.encode()).hexdigest()))
    response = client.get("/api/models/alice/style")
    assert response.status_code == 200, response.get_data(as_text=True)
    info = response.get_json()
    assert "cardData" not in info and info["id"] == "alice/style"


@pytest.mark.parametrize("tail", [b', "path": "a.bin"', b', "path": "a.bin"}} trailing',
                                  b', "path": 3}}'])
def test_a_file_line_that_is_not_valid_leaves_no_temporary_file(tmp_path, tail):
    from hub.errors import InvalidRequest
    from hub.hf.ndjson import parse_commit

    body = (b'{"key": "header", "value": {"summary": "s"}}\n'
            b'{"key": "file", "value": {"content": "' + base64.b64encode(b"x" * 5000)
            + b'"' + tail + b"\n")
    try:
        parse_commit(io.BytesIO(body), str(tmp_path))
    except InvalidRequest:
        # Checked while the refusal is handled: its traceback must not be what removes it.
        assert list(tmp_path.iterdir()) == []
    else:
        pytest.fail("the body was accepted")


def test_head_of_a_file_is_answered_from_the_database_on_every_surface(
        client, make_user, lora_dir):
    token = make_user("alice")
    card = "---\nlicense: apache-2.0\n---\n"
    assert _commit(client, token, "alice/style", _adapter(lora_dir, card)).status_code == 200
    size = len((lora_dir / "adapter_config.json").read_bytes())
    for url in ("/api/v1/adapters/alice/style/versions/1/files/adapter_config.json",
                "/alice/style/resolve/1/adapter_config.json"):
        head = client.head(url)
        # A presigned URL is signed for GET: a HEAD never redirects to one.
        assert head.status_code == 200, (url, head.status_code)
        assert head.headers["Content-Length"] == str(size)
        assert head.headers["Cache-Control"]
    resolve = client.head("/alice/style/resolve/1/adapter_config.json")
    assert resolve.headers["X-Linked-Size"] == str(size)
    weights = "/alice/style/resolve/1/adapter_model.safetensors"
    assert client.head(weights).status_code == 200
    assert client.get(weights).status_code in (200, 302)
    assert client.get("/api/v1/adapters/alice/style").get_json()["downloads"] == 1


def test_model_listing_reads_the_latest_versions_in_one_query_not_one_per_row(
        app, client, make_user, lora_dir):
    from sqlalchemy import event

    token = make_user("alice")
    card = "---\nlicense: apache-2.0\n---\n"
    for n in range(4):
        assert _commit(client, token, f"alice/style-{n}",
                       _adapter(lora_dir, card)).status_code == 200
    engine = app.extensions["lorastack"].db.engine
    statements: list[str] = []

    def _record(_conn, _cursor, statement, *_):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", _record)
    try:
        listing = client.get("/api/models?author=alice").get_json()
    finally:
        event.remove(engine, "before_cursor_execute", _record)
    assert len(listing) == 4 and all("lora" in model["tags"] for model in listing)
    from_versions = [s for s in statements if s.lstrip().startswith("SELECT versions.")]
    assert len(from_versions) <= 1, from_versions
