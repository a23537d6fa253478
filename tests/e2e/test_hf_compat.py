"""The Hugging Face Hub protocol: the real huggingface_hub, peft and transformers, with
HF_ENDPOINT set to a hub served over real HTTP, on both backends.

The clients run in a child process: huggingface_hub reads HF_ENDPOINT, HF_TOKEN, HF_HOME
and HF_HUB_OFFLINE when it is imported, and this suite's conftest makes the test process
offline. Each child runs one scenario (a function below) and prints its findings as JSON;
the assertions are made here, on what the real clients saw and on what the server served.
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
    proc = subprocess.run([sys.executable, "-c", "from tests.e2e.test_hf_compat import"
                           " client_main; client_main()"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def client_main() -> None:
    """Entry point of the child process: run the scenario named in HF_SCENARIO."""
    scenario, params = json.loads(os.environ["HF_SCENARIO"])
    print(json.dumps(globals()[f"scenario_{scenario}"](**params)))


def _error(call) -> str:
    """The name of the exception `call()` raises, with its message (or 'no error')."""
    try:
        call()
    except Exception as exc:  # the client's own error classes are what is checked
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _digests(folder: str) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in Path(folder).iterdir() if path.is_file()}


# --- scenarios: run in the child, with HF_ENDPOINT / HF_TOKEN / HF_HOME set ------------

def scenario_read(repo: str, private_repo: str, local_dir: str) -> dict:
    """model_info, listings, tree, refs, downloads, metadata and whoami."""
    from huggingface_hub import (HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url,
                                 snapshot_download)
    from huggingface_hub.utils._pagination import paginate

    api = HfApi()
    found: dict = {}
    info = api.model_info(repo, files_metadata=True)
    found["model_info"] = {
        "id": info.id, "sha": info.sha, "private": info.private, "tags": info.tags,
        "downloads": info.downloads, "library_name": info.library_name,
        "last_modified": info.last_modified.isoformat() if info.last_modified else None,
        "card_data": info.card_data.to_dict() if info.card_data else None,
        "siblings": {s.rfilename: {"size": s.size, "sha256": s.lfs.sha256 if s.lfs else None}
                     for s in info.siblings}}
    old = api.model_info(repo, revision="1.0.0")
    found["model_info_by_label"] = {"sha": old.sha,
                                    "card_data": old.card_data.to_dict() if old.card_data
                                    else None}
    found["model_info_by_commit"] = api.model_info(repo, revision=old.sha).sha
    found["list_models"] = {
        "search": [m.id for m in api.list_models(search="style")],
        "author": sorted(m.id for m in api.list_models(author="alice")),
        "filter": [m.id for m in api.list_models(filter="chat")],
        "sorted": [m.id for m in api.list_models(author="alice", sort="downloads", limit=5)],
        "limit": len(list(api.list_models(limit=1))),
        "pages": [item["id"] for item in paginate(f"{api.endpoint}/api/models",
                                                  params={"limit": 1, "sort": "id"},
                                                  headers=api._build_hf_headers())],
    }
    found["list_repo_files"] = sorted(api.list_repo_files(repo))
    found["list_repo_files_old"] = sorted(api.list_repo_files(repo, revision="1.0.0"))
    found["list_repo_tree"] = sorted([f.path, f.size, f.lfs.sha256 if f.lfs else None]
                                     for f in api.list_repo_tree(repo))
    refs = api.list_repo_refs(repo)
    found["list_repo_refs"] = {"branches": {r.name: r.target_commit for r in refs.branches},
                               "tags": {r.name: r.target_commit for r in refs.tags}}
    path = hf_hub_download(repo, "adapter_model.safetensors")
    found["hf_hub_download"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    path = hf_hub_download(repo, "adapter_config.json", revision="1.0.0")
    found["hf_hub_download_label"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    meta = get_hf_file_metadata(hf_hub_url(repo, "adapter_model.safetensors"))
    found["get_hf_file_metadata"] = {"commit": meta.commit_hash, "etag": meta.etag,
                                     "size": meta.size}
    found["snapshot_download"] = _digests(snapshot_download(repo))
    found["snapshot_download_old"] = _digests(snapshot_download(repo, revision="1.0.0"))
    found["snapshot_download_patterns"] = _digests(snapshot_download(
        repo, allow_patterns=["*.json"], local_dir=local_dir + "-json"))
    found["snapshot_download_local_dir"] = _digests(snapshot_download(repo, local_dir=local_dir))
    found["whoami"] = api.whoami()["name"]
    found["private_is_repo_not_found"] = _error(lambda: api.model_info(private_repo))
    found["private_download_is_repo_not_found"] = _error(
        lambda: hf_hub_download(private_repo, "adapter_config.json"))
    found["missing_repo"] = _error(lambda: api.model_info("alice/nothing-here"))
    found["missing_revision"] = _error(lambda: api.model_info(repo, revision="9.9.9"))
    found["missing_revision_download"] = _error(
        lambda: hf_hub_download(repo, "adapter_config.json", revision="9.9.9"))
    found["missing_entry"] = _error(lambda: hf_hub_download(repo, "nope.bin"))
    return found


def scenario_snapshot(repo: str, revision: str | None = None) -> dict:
    """One snapshot_download: the digests of the files it returns."""
    from huggingface_hub import snapshot_download

    return _digests(snapshot_download(repo, revision=revision))


def scenario_calls(calls: list) -> dict:
    """A few HfApi calls by name; each one's result or error name."""
    from huggingface_hub import HfApi

    api = HfApi()
    out = {}
    for label, name, args, kwargs in calls:
        try:
            result = getattr(api, name)(*args, **kwargs)
            if name.startswith("list_"):
                out[label] = {"ok": True, "ids": [item.id for item in result]}
                continue
            out[label] = {"ok": True, "sha": getattr(result, "sha", None),
                          "private": getattr(result, "private", None)}
        except Exception as exc:  # the client's error classes are what is checked
            out[label] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def scenario_serve(repo: str, card: str) -> dict:
    """Against `lorastack serve`: downloads, a commit, the history and paths-info."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi()
    found = {"hf_hub_download": hashlib.sha256(Path(hf_hub_download(
        repo, "adapter_model.safetensors")).read_bytes()).hexdigest(),
        "snapshot_download": _digests(snapshot_download(repo, revision="1.0.0"))}
    found["upload_file"] = api.upload_file(path_or_fileobj=card.encode(),
                                           path_in_repo="README.md", repo_id=repo).oid
    found["list_repo_commits"] = [[c.commit_id, c.title] for c in api.list_repo_commits(repo)]
    found["get_paths_info"] = [[p.path, p.size] for p in api.get_paths_info(
        repo, ["adapter_config.json", "nope.bin"], revision="1.0.0")]
    found["file_exists"] = [api.file_exists(repo, "README.md"),
                            api.file_exists(repo, "nope.bin")]
    out = Path(os.environ["HF_HOME"]).parent / "hf-cli"
    cli = subprocess.run([str(Path(sys.executable).parent / "hf"), "download", repo,
                          "--revision", "1.0.0", "--local-dir", str(out)],
                         capture_output=True, text=True, timeout=300)
    found["hf download"] = _digests(str(out)) if cli.returncode == 0 else cli.stderr[-2000:]
    return found


def scenario_peft(repo: str, base_dir: str, local_adapter: str) -> dict:
    """peft and transformers load the adapter by name; outputs match the local folder."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    tokens = torch.tensor([[1, 5, 9, 3, 7]])

    def logits(model):
        with torch.no_grad():
            return model(tokens).logits

    def base():
        return AutoModelForCausalLM.from_pretrained(base_dir).eval()

    reference = logits(PeftModel.from_pretrained(base(), local_adapter).eval())
    found = {}
    by_name = PeftModel.from_pretrained(base(), repo).eval()
    found["PeftModel.from_pretrained"] = bool(torch.allclose(logits(by_name), reference))
    pinned = PeftModel.from_pretrained(base(), repo, revision="1.0.0").eval()
    found["PeftModel.from_pretrained(revision)"] = bool(
        torch.allclose(logits(pinned), reference))
    config = PeftConfig.from_pretrained(repo)
    found["PeftConfig.from_pretrained"] = [config.peft_type, config.r,
                                           sorted(config.target_modules)]
    model = base()
    model.load_adapter(repo)
    found["load_adapter"] = bool(torch.allclose(logits(model), reference))
    return found


def scenario_write(repo: str, folder: str, other_folder: str, work: str) -> dict:
    """create_repo, upload_folder, upload_file, no-op commits, refusals and delete_file."""
    from huggingface_hub import HfApi

    api = HfApi()
    work_dir = Path(work)
    found: dict = {}
    url = api.create_repo(repo, private=True)
    found["create_repo"] = [url.repo_id, api.model_info(repo).private]
    found["create_repo(exist_ok)"] = api.create_repo(repo, private=True, exist_ok=True).repo_id
    first = api.upload_folder(folder_path=folder, repo_id=repo)
    found["upload_folder"] = first.oid
    found["upload_folder again"] = api.upload_folder(folder_path=folder, repo_id=repo).oid
    card = work_dir / "README.md"
    card.write_text("---\nlicense: mit\nversion: 2.0.0\n---\n# Relicensed\n")
    found["upload_file"] = api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md",
                                           repo_id=repo).oid
    found["upload_folder(other weights)"] = api.upload_folder(
        folder_path=other_folder, repo_id=repo, allow_patterns=["*.json", "*.safetensors"]).oid
    pickle = work_dir / "adapter_model.bin"
    pickle.write_bytes(b"\x80\x04K\x01.")
    found["pickle refused"] = _error(lambda: api.upload_file(
        path_or_fileobj=str(pickle), path_in_repo="adapter_model.bin", repo_id=repo))
    found["unexpected file refused"] = _error(lambda: api.upload_file(
        path_or_fileobj=b"x", path_in_repo="notes.txt", repo_id=repo))
    bad = work_dir / "adapter_model.safetensors"
    bad.write_bytes(b"\xff" * 64)
    found["bad safetensors refused"] = _error(lambda: api.upload_file(
        path_or_fileobj=str(bad), path_in_repo="adapter_model.safetensors", repo_id=repo))
    found["delete_file refused"] = _error(lambda: api.delete_file("README.md", repo_id=repo))
    found["delete_tag refused"] = _error(lambda: api.delete_tag(repo, tag="2.0.0"))
    found["refs"] = sorted(ref.name for ref in api.list_repo_refs(repo).tags)
    return found


def scenario_push(repo: str, new_repo: str, base_dir: str) -> dict:
    """PeftModel.push_to_hub, then snapshot_download and load: the same outputs."""
    import torch
    from huggingface_hub import snapshot_download
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    tokens = torch.tensor([[1, 5, 9, 3, 7]])
    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir).eval(),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False)).eval()
    with torch.no_grad():
        expected = model(tokens).logits
    found = {"push_to_hub (new adapter, no licence)": _error(
        lambda: model.push_to_hub(new_repo))}
    model.push_to_hub(repo)
    folder = snapshot_download(repo)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir).eval(),
                                       folder).eval()
    with torch.no_grad():
        found["push_to_hub -> snapshot_download -> same outputs"] = bool(
            torch.allclose(loaded(tokens).logits, expected))
    found["files"] = sorted(p.name for p in Path(folder).iterdir())
    return found


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
    return _digests(str(folder))


def test_read_side_calls_of_huggingface_hub(backend, served, published, client, other_lora_dir,
                                            tmp_path):
    endpoint, log = served
    found = run_client("read", endpoint, published["alice"], tmp_path, repo="alice/style-lora",
                       private_repo="bob/secret", local_dir=str(tmp_path / "local"))
    api = client.get("/api/v1/adapters/alice/style-lora").get_json()
    new = api["versions"][0]
    sizes = {f["path"]: f["size"] for f in new["files"]}
    digests = {f["path"]: f["sha256"] for f in new["files"]}
    info = found["model_info"]
    checks = {
        "model_info": info["id"] == "alice/style-lora" and len(info["sha"]) == 40
        and info["private"] is False and info["library_name"] == "peft"
        and "chat" in info["tags"] and "peft" in info["tags"]
        and info["siblings"] == {p: {"size": sizes[p], "sha256": digests[p]} for p in sizes}
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
            [p, sizes[p], digests[p]] for p in sizes),
        "list_repo_refs": found["list_repo_refs"]["branches"] == {"main": info["sha"]}
        and found["list_repo_refs"]["tags"] == {"2.0.0": info["sha"],
                                                "1.0.0": found["model_info_by_label"]["sha"]},
        "hf_hub_download": found["hf_hub_download"] == digests["adapter_model.safetensors"],
        "hf_hub_download(revision)": found["hf_hub_download_label"] == _files(
            published["carded"])["adapter_config.json"],
        "get_hf_file_metadata": found["get_hf_file_metadata"] == {
            "commit": info["sha"], "etag": digests["adapter_model.safetensors"],
            "size": sizes["adapter_model.safetensors"]},
        "snapshot_download": found["snapshot_download"] == _files(other_lora_dir),
        "snapshot_download(revision)": found["snapshot_download_old"] == _files(
            published["carded"]),
        "snapshot_download(allow_patterns)": found["snapshot_download_patterns"] == {
            "adapter_config.json": digests["adapter_config.json"]},
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
                                                       tmp_path, settings):
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


def test_push_to_hub_round_trip_gives_the_same_outputs(backend, served, published, client, tmp_path,
                                                       settings):
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
