"""The `lorastack` command against a real hub over HTTP: users, tokens, push, pull, search."""
from __future__ import annotations

import json

from click.testing import CliRunner

from hub.cli import main


def server_env(settings) -> dict:
    env = {"LORASTACK_DATA_DIR": str(settings.data_dir),
           "LORASTACK_DATABASE_URL": settings.database_url,
           "LORASTACK_STORAGE_URL": settings.storage_url}
    if settings.s3_endpoint_url:
        env["LORASTACK_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


def run(args, env, ok=True):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_users_and_tokens_print_working_tokens(settings, client):
    env = server_env(settings)
    created = run(["users", "create", "alice"], env)
    token = created.output.strip().splitlines()[-1]
    me = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert me.get_json() == {"name": "alice", "is_admin": False, "scopes": ["read", "write"]}
    read = run(["tokens", "create", "alice", "--scope", "read"], env).output.splitlines()[-1]
    me = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {read}"}).get_json()
    assert me["scopes"] == ["read"]
    duplicate = run(["users", "create", "alice"], env, ok=False)
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    missing = run(["tokens", "create", "nobody"], env, ok=False)
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_tokens_list_shows_prefixes_and_revoke_makes_a_token_401_at_once(settings, client):
    env = server_env(settings)
    token = run(["users", "create", "alice"], env).output.split()[-1]
    read = run(["tokens", "create", "alice", "--scope", "read"], env).output.split()[-1]
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {read}"}).status_code == 200
    listed = run(["tokens", "list", "alice"], env).output
    assert token[:12] in listed and read[:12] in listed and token not in listed
    assert "write" in listed and "read" in listed and "UTC" in listed
    revoked = run(["tokens", "revoke", read[:12]], env)
    assert "revoked" in revoked.output
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {read}"}).status_code == 401
    assert read[:12] not in run(["tokens", "list", "alice"], env).output
    again = run(["tokens", "revoke", read[:12]], env, ok=False)
    assert again.exit_code == 1 and "(not_found)" in again.output
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_tokens_are_stored_hashed(settings, app):
    from sqlalchemy import select

    from hub.models import Token

    token = run(["users", "create", "alice", "--admin"], server_env(settings)).output.split()[-1]
    with app.extensions["lorastack"].db.session() as session:
        stored = session.scalars(select(Token.token_hash)).all()
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64


def test_push_pull_search_round_trip_loads_in_peft(settings, live_server, make_user, lora_dir,
                                                   tmp_path):
    import torch
    from peft import PeftModel

    from tests.support.adapters import tiny_llama

    token = make_user("alice")
    env = {"LORASTACK_ENDPOINT": live_server, "LORASTACK_TOKEN": token}
    pushed = run(["push", str(lora_dir), "alice/tiny", "--version", "1.0.0", "--license",
                  "apache-2.0", "--tag", "demo", "--private"], env)
    assert "published alice/tiny@1.0.0" in pushed.output
    again = run(["push", str(lora_dir), "alice/tiny", "--version", "1.0.0", "--license",
                 "apache-2.0"], env)
    assert "already published" in again.output

    out = tmp_path / "pulled"
    run(["pull", "alice/tiny", str(out)], env)
    for path in lora_dir.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
    base = tiny_llama(0)
    model = PeftModel.from_pretrained(base, str(out))
    inputs = torch.tensor([[1, 2, 3, 4]])
    reference = PeftModel.from_pretrained(tiny_llama(0), str(lora_dir))
    with torch.no_grad():
        assert torch.allclose(model(inputs).logits, reference(inputs).logits)

    found = run(["search", "tiny", "--json"], env)
    assert [item["id"] for item in json.loads(found.output)] == ["alice/tiny"]
    anonymous = run(["search", "tiny"], {"LORASTACK_ENDPOINT": live_server,
                                         "LORASTACK_TOKEN": ""})
    assert "no adapters found" in anonymous.output
    missing = run(["pull", "alice/tiny@9.9", str(tmp_path / "x")], env, ok=False)
    assert missing.exit_code == 1 and "no version" in missing.output
    assert not (tmp_path / "x").exists()


def test_push_reports_problems_in_one_line(settings, live_server, make_user, lora_dir,
                                           tmp_path):
    token = make_user("alice")
    env = {"LORASTACK_ENDPOINT": live_server, "LORASTACK_TOKEN": token}
    bad = run(["push", str(lora_dir), "alice/tiny", "--version", "latest", "--license", "mit"],
              env, ok=False)
    assert bad.exit_code == 1 and "(invalid_version)" in bad.output
    assert "Traceback" not in bad.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "adapter_model.bin").write_bytes(b"\x80\x04.")
    refused = run(["push", str(empty), "alice/tiny", "--version", "1", "--license", "mit"], env,
                  ok=False)
    assert refused.exit_code == 1 and "safetensors" in refused.output
    down = run(["search"], {"LORASTACK_ENDPOINT": "http://127.0.0.1:9", "LORASTACK_TOKEN": ""},
               ok=False)
    assert down.exit_code == 1 and "cannot reach" in down.output


def test_db_upgrade_builds_the_schema_on_a_fresh_database(tmp_path):
    from sqlalchemy import create_engine, inspect

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = run(["db", "upgrade"], {"LORASTACK_DATABASE_URL": url,
                                   "LORASTACK_DATA_DIR": str(tmp_path)})
    assert "head" in out.output
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"users", "tokens", "adapters", "versions", "version_files",
            "alembic_version"} <= tables


def test_gc_removes_only_old_orphan_blobs(settings, app, client, make_user, lora_dir,
                                          tmp_path):
    import hashlib

    from hub.storage import blob_key
    from tests.e2e.helpers import publish

    token = make_user("alice")
    assert publish(client, token, "alice/tiny", "1", lora_dir).status_code == 201
    store = app.extensions["lorastack"].store
    orphan = tmp_path / "orphan.bin"
    orphan.write_bytes(b"nobody names me")
    digest = hashlib.sha256(orphan.read_bytes()).hexdigest()
    store.put_file(blob_key(digest), orphan, size=orphan.stat().st_size, sha256=digest)
    env = server_env(settings)
    young = run(["gc"], env)
    assert "0 orphan blob(s) removed" in young.output and store.exists(blob_key(digest))
    dry = run(["gc", "--grace-hours", "0", "--dry-run"], env)
    assert f"would remove {blob_key(digest)}" in dry.output and store.exists(blob_key(digest))
    run(["gc", "--grace-hours", "0"], env)
    assert not store.exists(blob_key(digest))
    for path in lora_dir.iterdir():
        assert store.exists(blob_key(hashlib.sha256(path.read_bytes()).hexdigest()))


def test_gc_spares_an_old_blob_that_a_version_names_meanwhile(settings, app, client,
                                                             make_user, lora_dir):
    import hashlib
    from datetime import datetime, timezone

    from hub.services.maintenance import collect_garbage
    from hub.storage import blob_key
    from tests.e2e.helpers import publish

    hub = app.extensions["lorastack"]
    token = make_user("alice")
    assert publish(client, token, "alice/first", "1", lora_dir).status_code == 201
    key = blob_key(hashlib.sha256((lora_dir / "adapter_model.safetensors").read_bytes())
                   .hexdigest())
    # Make the blob an old orphan: delete the version's rows, keep the bytes.
    from sqlalchemy import delete

    from hub.models import Adapter
    with hub.db.session() as session:
        session.execute(delete(Adapter))

    class PublishDuringListing:
        """A store whose listing runs while a publish of the same bytes commits."""

        def iter_blobs(self):
            listing = [(k, datetime(2000, 1, 1, tzinfo=timezone.utc))
                       for k, _ in hub.store.iter_blobs()]
            assert publish(client, token, "alice/second", "1", lora_dir).status_code == 201
            yield from listing

        def delete(self, k):
            hub.store.delete(k)

    removed = collect_garbage(hub.db, PublishDuringListing(), grace_hours=0)
    assert key not in removed and hub.store.exists(key)
    body = client.get("/api/v1/adapters/alice/second/versions/1/files/adapter_model.safetensors")
    assert body.status_code in (200, 302)
