"""The Hugging Face Hub protocol: the real huggingface_hub, peft and transformers, with
HF_ENDPOINT set to a hub served over real HTTP, on both backends.

The clients run in a child process, one scenario each (tests/support/hf_clients.py); the
assertions are made here, on what the real clients saw and on what the server served.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.e2e.helpers import publish
from tests.support.hf_clients import digests

ROOT = Path(__file__).resolve().parents[2]
#: (scenario, call, passed): printed as the closing table of the run.
CALLS: list[tuple[str, str, bool]] = []

CARD = """---
license: apache-2.0
tags: [chat, style]
base_model: tiny-llama-64
version_note: first
---
# Style LoRA
"""


class AccessLog:
    """WSGI middleware that records (method, path) of every request the hub answers."""

    def __init__(self, app) -> None:
        self.app = app
        self.lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            self.lines.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        return self.app(environ, start_response)

    def gets_of_files(self) -> list[str]:
        """Paths of GET requests for file bytes (`resolve`)."""
        with self._lock:
            return [path for method, path in self.lines
                    if method == "GET" and "/resolve/" in path]


@pytest.fixture
def served(app):
    """The app over real HTTP, with an access log: (endpoint, AccessLog)."""
    from werkzeug.serving import make_server

    log = AccessLog(app)
    server = make_server("127.0.0.1", 0, log, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", log
    server.shutdown()
    thread.join(5)


def run_client(scenario: str, endpoint: str, token: str | None, tmp_path: Path,
               **params) -> dict:
    """Run `scenario` with the real clients in a child process; its JSON findings."""
    home = tmp_path / "hf-home"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": endpoint,
           "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_ETAG_TIMEOUT": "30", "HF_SCENARIO": json.dumps([scenario, params])}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    proc = subprocess.run([sys.executable, "-c", "from tests.support.hf_clients import"
                           " client_main; client_main()"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the tests -------------------------------------------------------------------------

def _record(scenario: str, results: dict[str, bool]) -> None:
    CALLS.extend((scenario, call, ok) for call, ok in results.items())


@pytest.fixture
def backend(settings) -> str:
    """The backend's name, for the closing table."""
    return "postgres-s3" if settings.storage_url.startswith("s3://") else "sqlite-local"


@pytest.fixture
def published(client, make_user, lora_dir, other_lora_dir, tmp_path):
    """alice/style-lora 1.0.0 (with a card) and 2.0.0, bob/secret (private)."""
    alice = make_user("alice")
    bob = make_user("bob")
    carded = tmp_path / "carded"
    carded.mkdir()
    for path in lora_dir.iterdir():
        (carded / path.name).write_bytes(path.read_bytes())
    (carded / "README.md").write_text(CARD)
    assert publish(client, alice, "alice/style-lora", "1.0.0", carded).status_code == 201
    assert publish(client, alice, "alice/style-lora", "2.0.0", other_lora_dir,
                   metadata={"tags": ["chat"]}).status_code == 201
    assert publish(client, alice, "alice/other", "1.0.0", lora_dir,
                   metadata={"tags": ["code"]}).status_code == 201
    assert publish(client, bob, "bob/secret", "1.0.0", lora_dir,
                   metadata={"visibility": "private"}).status_code == 201
    return {"alice": alice, "bob": bob, "carded": carded}


def _files(folder: Path) -> dict:
    return digests(str(folder))


def test_read_side_calls_of_huggingface_hub(backend, served, published, client, other_lora_dir,
                                            tmp_path):
    endpoint, log = served
    found = run_client("read", endpoint, published["alice"], tmp_path, repo="alice/style-lora",
                       private_repo="bob/secret", local_dir=str(tmp_path / "local"))
    api = client.get("/api/v1/adapters/alice/style-lora").get_json()
    new = api["versions"][0]
    sizes = {f["path"]: f["size"] for f in new["files"]}
    sha256s = {f["path"]: f["sha256"] for f in new["files"]}
    info = found["model_info"]
    checks = {
        "model_info": info["id"] == "alice/style-lora" and len(info["sha"]) == 40
        and info["private"] is False and info["library_name"] == "peft"
        and "chat" in info["tags"] and "peft" in info["tags"]
        and info["siblings"] == {p: {"size": sizes[p], "sha256": sha256s[p]} for p in sizes}
        and info["last_modified"] is not None,
        "model_info(revision=label)": found["model_info_by_label"]["card_data"]["license"]
        == "apache-2.0" and found["model_info_by_label"]["card_data"]["tags"] == ["chat",
                                                                                  "style"],
        "model_info(revision=commit)": found["model_info_by_commit"]
        == found["model_info_by_label"]["sha"] != info["sha"],
        "list_models(search)": found["list_models"]["search"] == ["alice/style-lora"],
        "list_models(author)": found["list_models"]["author"] == ["alice/other",
                                                                  "alice/style-lora"],
        "list_models(filter)": found["list_models"]["filter"] == ["alice/style-lora"],
        "list_models(sort, limit)": len(found["list_models"]["sorted"]) == 2
        and found["list_models"]["limit"] == 1,
        "list_models paging (Link)": found["list_models"]["pages"] == ["alice/other",
                                                                      "alice/style-lora"],
        "list_repo_files": found["list_repo_files"] == sorted(sizes)
        and found["list_repo_files_old"] == sorted(_files(published["carded"])),
        "list_repo_tree": found["list_repo_tree"] == sorted(
            [p, sizes[p], sha256s[p]] for p in sizes),
        "list_repo_refs": found["list_repo_refs"]["branches"] == {"main": info["sha"]}
        and found["list_repo_refs"]["tags"] == {"2.0.0": info["sha"],
                                                "1.0.0": found["model_info_by_label"]["sha"]},
        "hf_hub_download": found["hf_hub_download"] == sha256s["adapter_model.safetensors"],
        "hf_hub_download(revision)": found["hf_hub_download_label"] == _files(
            published["carded"])["adapter_config.json"],
        "get_hf_file_metadata": found["get_hf_file_metadata"] == {
            "commit": info["sha"], "etag": sha256s["adapter_model.safetensors"],
            "size": sizes["adapter_model.safetensors"]},
        "snapshot_download": found["snapshot_download"] == _files(other_lora_dir),
        "snapshot_download(revision)": found["snapshot_download_old"] == _files(
            published["carded"]),
        "snapshot_download(allow_patterns)": found["snapshot_download_patterns"] == {
            "adapter_config.json": sha256s["adapter_config.json"]},
        "snapshot_download(local_dir)": found["snapshot_download_local_dir"] == _files(
            other_lora_dir),
        "whoami": found["whoami"] == "alice",
        "private -> RepositoryNotFoundError": found["private_is_repo_not_found"].startswith(
            "RepositoryNotFoundError") and found["private_download_is_repo_not_found"]
        .startswith("RepositoryNotFoundError"),
        "missing repo -> RepositoryNotFoundError": found["missing_repo"].startswith(
            "RepositoryNotFoundError") and "No adapter alice/nothing-here" in found[
            "missing_repo"],
        "missing revision -> RevisionNotFoundError": found["missing_revision"].startswith(
            "RevisionNotFoundError") and found["missing_revision_download"].startswith(
            "RevisionNotFoundError") and "9.9.9" in found["missing_revision"],
        "missing file -> EntryNotFoundError": "EntryNotFoundError" in found["missing_entry"],
    }
    _record(f"read ({backend})", checks)
    assert all(checks.values()), {k: v for k, v in checks.items() if not v} | {"found": found}
    # Counted as in the API: the weights of 2.0.0 fetched once by hf_hub_download, those of
    # 1.0.0 once by its snapshot; the client's cache served every other call.
    assert client.get("/api/v1/adapters/alice/style-lora").get_json()["downloads"] == 2


def test_second_snapshot_download_gets_no_file_bytes(backend, served, published, tmp_path):
    endpoint, log = served
    first = run_client("snapshot", endpoint, published["alice"], tmp_path,
                       repo="alice/style-lora")
    gets = len(log.gets_of_files())
    assert gets == 2  # 2.0.0: adapter_config.json and adapter_model.safetensors
    again = run_client("snapshot", endpoint, published["alice"], tmp_path,
                       repo="alice/style-lora")
    assert again == first
    assert log.gets_of_files()[gets:] == []
    _record(f"cache ({backend})", {"snapshot_download (cached: no GET)": True})


def test_read_token_reads_and_private_adapter_is_repo_not_found_to_others(
        backend, served, published, make_user, tmp_path):
    endpoint, _ = served
    bob_read = make_user("bob", scope="read")
    card = tmp_path / "README.md"
    card.write_text(CARD)
    calls = [["model_info", "model_info", ["bob/secret"], {}],
             ["list_models", "list_models", [], {"author": "bob"}],
             ["upload_file", "upload_file", [], {"path_or_fileobj": str(card),
                                                 "path_in_repo": "README.md",
                                                 "repo_id": "bob/secret"}]]
    as_bob = run_client("calls", endpoint, bob_read, tmp_path, calls=calls)
    anonymous = run_client("calls", endpoint, None, tmp_path, calls=calls)
    results = {"read-scope token reads its private adapter": as_bob["model_info"]["ok"]
               and as_bob["model_info"]["private"] is True
               and as_bob["list_models"]["ids"] == ["bob/secret"],
               "read-scope token cannot write (forbidden)": not as_bob["upload_file"]["ok"]
               and "read scope" in as_bob["upload_file"]["error"]
               and "(forbidden)" in as_bob["upload_file"]["error"],
               "anonymous: private -> RepositoryNotFoundError":
               anonymous["model_info"]["error"].startswith("RepositoryNotFoundError")
               and anonymous["list_models"]["ids"] == []}
    _record(f"access ({backend})", results)
    assert all(results.values()), (as_bob, anonymous)


def test_a_yanked_version_stays_reachable_by_label_and_commit_and_leaves_main(
        backend, served, published, client, tmp_path):
    from tests.e2e.helpers import auth

    endpoint, _ = served
    before = run_client("calls", endpoint, None, tmp_path, calls=[
        ["2.0.0", "model_info", ["alice/style-lora"], {"revision": "2.0.0"}]])
    assert client.post("/api/v1/adapters/alice/style-lora/versions/2.0.0/yank",
                       json={"reason": "bad"}, headers=auth(published["alice"])).status_code == 200
    found = run_client("calls", endpoint, None, tmp_path, calls=[
        ["main", "model_info", ["alice/style-lora"], {}],
        ["1.0.0", "model_info", ["alice/style-lora"], {"revision": "1.0.0"}],
        ["label", "model_info", ["alice/style-lora"], {"revision": "2.0.0"}],
        ["commit", "model_info", ["alice/style-lora"], {"revision": before["2.0.0"]["sha"]}]])
    results = {"yanked: main is the newest not yanked": found["main"]["sha"]
               == found["1.0.0"]["sha"],
               "yanked: reachable by label and commit id": found["label"]["sha"]
               == found["commit"]["sha"] == before["2.0.0"]["sha"]}
    _record(f"yank ({backend})", results)
    assert all(results.values()), found


def test_peft_and_transformers_load_an_adapter_by_name(backend, served, published, lora_dir,
                                                       tmp_path):
    from tests.support.tiny_models import tiny_llama

    base_dir = tmp_path / "base"
    tiny_llama(0).save_pretrained(base_dir)
    endpoint, _ = served
    found = run_client("peft", endpoint, published["alice"], tmp_path, repo="alice/other",
                       base_dir=str(base_dir), local_adapter=str(lora_dir))
    results = {key: value is True for key, value in found.items()
               if key != "PeftConfig.from_pretrained"}
    results["PeftConfig.from_pretrained"] = found["PeftConfig.from_pretrained"] == [
        "LORA", 4, ["q_proj", "v_proj"]]
    _record(f"peft ({backend})", results)
    assert all(results.values()), found


def test_the_clients_against_lorastack_serve(backend, published, client, settings,
                                            tmp_path):
    """The same calls through gunicorn (`lorastack serve`), as deployed."""
    from tests.support.moto_server import free_port
    from tests.support.processes import HubProcess, hub_env

    port = free_port()
    server = HubProcess(["serve"], hub_env(settings, PORT=str(port)), tmp_path / "serve.log")
    try:
        server.wait_for_log("Booting worker")
        card = CARD.replace("version_note: first", "version: 3.0.0")
        found = run_client("serve", f"http://127.0.0.1:{port}", published["alice"], tmp_path,
                           repo="alice/style-lora", card=card)
    finally:
        server.stop()
    detail = client.get("/api/v1/adapters/alice/style-lora").get_json()
    labels = [v["version"] for v in detail["versions"]]
    weights = {f["path"]: f for f in detail["versions"][1]["files"]}["adapter_model.safetensors"]
    checks = {
        "serve: hf_hub_download": found["hf_hub_download"] == weights["sha256"],
        "serve: snapshot_download(revision)": found["snapshot_download"] == _files(
            published["carded"]),
        "serve: upload_file (version: from the card)": labels == ["3.0.0", "2.0.0", "1.0.0"],
        "serve: list_repo_commits": [title for _, title in found["list_repo_commits"]] == [
            "Version 3.0.0", "Version 2.0.0", "Version 1.0.0"]
        and found["list_repo_commits"][0][0] == found["upload_file"],
        "serve: get_paths_info": found["get_paths_info"] == [
            ["adapter_config.json", (published["carded"] / "adapter_config.json").stat().st_size]],
        "serve: file_exists": found["file_exists"] == [True, False],
        "serve: hf download (CLI)": found["hf download"] == _files(published["carded"]),
    }
    _record(f"serve ({backend})", checks)
    assert all(checks.values()), found


def test_resolve_headers_and_s3_redirect(served, published, client, settings):
    import requests

    endpoint, _ = served
    api = client.get("/api/v1/adapters/alice/style-lora/versions/1.0.0").get_json()
    weights = next(f for f in api["files"] if f["path"] == "adapter_model.safetensors")
    url = f"{endpoint}/alice/style-lora/resolve/1.0.0/adapter_model.safetensors"
    head = requests.head(url, allow_redirects=False, timeout=30)
    assert head.status_code == 200
    assert head.headers["X-Linked-Etag"] == f'"{weights["sha256"]}"'
    assert head.headers["ETag"] == f'"{weights["sha256"]}"'
    assert head.headers["X-Linked-Size"] == str(weights["size"])
    assert head.headers["Content-Length"] == str(weights["size"])
    assert len(head.headers["X-Repo-Commit"]) == 40
    get = requests.get(url, allow_redirects=False, headers={"Range": "bytes=0-9"}, timeout=30)
    if settings.storage_url.startswith("s3://"):
        assert get.status_code == 302
        assert get.headers["Location"].startswith(settings.s3_endpoint_url)
        body = requests.get(get.headers["Location"], headers={"Range": "bytes=0-9"},
                            timeout=30)
        assert body.status_code == 206 and len(body.content) == 10
    else:
        assert get.status_code == 206 and len(get.content) == 10
        assert get.headers["Content-Range"] == f"bytes 0-9/{weights['size']}"
    assert get.headers["X-Repo-Commit"] == head.headers["X-Repo-Commit"]
    missing = requests.head(f"{endpoint}/alice/style-lora/resolve/1.0.0/nope.bin", timeout=30)
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == head.headers["X-Repo-Commit"]


def test_a_commit_body_is_decoded_to_disk_with_flat_memory(tmp_path):
    import base64
    import io
    import tracemalloc

    from hub.hf.ndjson import parse_commit

    weights = os.urandom(32 * 1024 * 1024)
    lines = [{"key": "header", "value": {"summary": "big"}},
             {"key": "file", "value": {"content": base64.b64encode(weights).decode(),
                                       "path": "adapter_model.safetensors",
                                       "encoding": "base64"}},
             {"key": "file", "value": {"content": base64.b64encode(b"{}").decode(),
                                       "path": "adapter_config.json", "encoding": "base64"}}]
    body = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    tracemalloc.start()
    try:
        parsed = parse_commit(body, str(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    try:
        temp = parsed.files["adapter_model.safetensors"]
        assert temp.size == len(weights)
        assert temp.hexdigest() == hashlib.sha256(weights).hexdigest()
        assert Path(temp.name).read_bytes() == weights
        assert parsed.header == {"summary": "big"}
        assert sorted(parsed.files) == ["adapter_config.json", "adapter_model.safetensors"]
    finally:
        parsed.close()
    assert peak < 8 * 1024 * 1024  # the body is 43 MiB; reads are 1 MiB


@pytest.mark.parametrize("body, says", [
    (b'{"key": "file", "value": {"content": "AAAA", "path": "a"}}\n', "header"),
    (b'{"key": "header", "value": {}}\n{"key": "file", "value": {"content": "A*==", '
     b'"path": "a"}}\n', "base64"),
    (b'{"key": "header", "value": {"summary": "x"}}\n{"key": "file", "value": {"content": '
     b'"AAAA', "ends inside"),
    (b'{"key": "header", "value": {"summary": "x"}}\nnot json\n', "JSON"),
    (b'{"key": "header", "value": {"summary": "x"}}\n{"key": "rename", "value": {}}\n',
     "Unknown commit line"),
])
def test_a_malformed_commit_body_is_an_invalid_request(tmp_path, body, says):
    import io

    from hub.errors import InvalidRequest
    from hub.hf.ndjson import parse_commit

    with pytest.raises(InvalidRequest, match=says):
        parse_commit(io.BytesIO(body), str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_commit_ids_are_stable_and_name_label_and_files():
    from hub.services.commits import commit_id

    files = [("b.json", "0" * 64, 3), ("a.safetensors", "1" * 64, 10)]
    assert commit_id("1.0.0", files) == commit_id("1.0.0", list(reversed(files)))
    assert commit_id("1.0.0", files) != commit_id("1.0.1", files)
    assert commit_id("1.0.0", files) != commit_id("1.0.0", files[:1])
    # Pinned: a client's cache names snapshots by it, so it must never change.
    assert commit_id("1.0.0", files) == "f222becbef9d2ce2a9b5447e4c000a338efd25db"


def test_write_side_publishes_versions_through_the_publish_service(
        backend, served, published, client, lora_dir, other_lora_dir, tmp_path):
    endpoint, _ = served
    work = tmp_path / "work"
    work.mkdir()
    found = run_client("write", endpoint, published["alice"], tmp_path, repo="alice/pushed",
                       folder=str(published["carded"]), other_folder=str(other_lora_dir),
                       work=str(work))
    detail = client.get("/api/v1/adapters/alice/pushed",
                        headers={"Authorization": f"Bearer {published['alice']}"}).get_json()
    versions = {v["version"]: v for v in detail["versions"]}
    checks = {
        "create_repo(private)": found["create_repo"] == ["alice/pushed", True]
        and detail["visibility"] == "private",
        "create_repo(exist_ok)": found["create_repo(exist_ok)"] == "alice/pushed",
        "upload_folder (label 1, licence from the card)": versions["1"]["license"]
        == "apache-2.0" and sorted(f["path"] for f in versions["1"]["files"]) == sorted(
            _files(published["carded"])),
        "unchanged commit returns the version": found["upload_folder again"]
        == found["upload_folder"],
        "upload_file (label and licence from the card)": versions["2.0.0"]["license"] == "mit",
        "upload_folder (next integer, licence kept)": versions["2"]["license"] == "mit"
        and {f["path"]: f["sha256"] for f in versions["2"]["files"]}[
            "adapter_model.safetensors"] == _files(other_lora_dir)["adapter_model.safetensors"],
        "card's version: taken -> refused (version_exists)": "(version_exists)" in found[
            "taken version: refused"] and "Change `version:`" in found["taken version: refused"],
        "pickle refused (unsupported_format)": "(unsupported_format)" in found["pickle refused"],
        "non-adapter file refused (unexpected_file)": "(unexpected_file)" in found[
            "unexpected file refused"],
        "bad safetensors refused (invalid_safetensors)": "(invalid_safetensors)" in found[
            "bad safetensors refused"],
        "delete_file refused (yank)": "yank" in found["delete_file refused"],
        "delete_tag refused (yank)": "yank" in found["delete_tag refused"],
        "list_repo_refs after commits": found["refs"] == ["1", "2", "2.0.0"],
    }
    _record(f"write ({backend})", checks)
    assert all(checks.values()), {k: v for k, v in checks.items() if not v} | {"found": found}
    assert sorted(versions) == ["1", "2", "2.0.0"]


def test_push_to_hub_round_trip_gives_the_same_outputs(backend, served, published, client,
                                                       tmp_path):
    from tests.support.tiny_models import tiny_llama

    base_dir = tmp_path / "base"
    tiny_llama(0).save_pretrained(base_dir)
    endpoint, _ = served
    found = run_client("push", endpoint, published["alice"], tmp_path, repo="alice/other",
                       new_repo="alice/brand-new", base_dir=str(base_dir))
    refusal = found["push_to_hub (new adapter, no licence)"]
    latest = client.get("/api/v1/adapters/alice/other/versions/latest").get_json()
    checks = {
        "push_to_hub (new adapter, no licence): refused": "has no licence yet" in refusal
        and "(unknown_license)" in refusal,
        "push_to_hub (licence kept, next integer)": latest["version"] == "1"
        and latest["license"] == "apache-2.0",
        "push_to_hub -> snapshot_download -> same outputs": found[
            "push_to_hub -> snapshot_download -> same outputs"] is True,
    }
    _record(f"push ({backend})", checks)
    assert all(checks.values()), found


def teardown_module(module) -> None:
    """The closing table: each client call and whether it passed."""
    if CALLS:
        width = max(len(call) for _, call, _ in CALLS)
        first = max(len(scenario) for scenario, _, _ in CALLS)
        print("\n\nHF client calls against lorastack")
        print(f"| {'scenario':<{first}} | {'call':<{width}} | result |")
        for scenario, call, ok in CALLS:
            print(f"| {scenario:<{first}} | {call:<{width}} | {'pass' if ok else 'FAIL'}   |")
