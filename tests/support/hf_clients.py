"""The real Hugging Face clients, run in a child process against a hub (HF_ENDPOINT).

huggingface_hub reads HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE when it is
imported, and the test process is offline (tests/conftest.py): each scenario below runs in
a child (`run_client` in tests/e2e/test_hf_compat.py starts it) and prints its findings as
JSON; the assertions are made by the tests, on what the real clients saw.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


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


def digests(folder: str) -> dict:
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
    found["snapshot_download"] = digests(snapshot_download(repo))
    found["snapshot_download_old"] = digests(snapshot_download(repo, revision="1.0.0"))
    found["snapshot_download_patterns"] = digests(snapshot_download(
        repo, allow_patterns=["*.json"], local_dir=local_dir + "-json"))
    found["snapshot_download_local_dir"] = digests(snapshot_download(repo, local_dir=local_dir))
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

    return digests(snapshot_download(repo, revision=revision))


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
        "snapshot_download": digests(snapshot_download(repo, revision="1.0.0"))}
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
    found["hf download"] = digests(str(out)) if cli.returncode == 0 else cli.stderr[-2000:]
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
    card.write_text("---\nlicense: mit\nversion: 2.0.0\n---\n# Changed again\n")
    found["taken version: refused"] = _error(lambda: api.upload_file(
        path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo))
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
