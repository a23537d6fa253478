"""The Hugging Face write surface through Flask's client: version labels from the card,
create_repo's races and refusals, the commit body's temporary files, error shapes."""
from __future__ import annotations

import base64
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
