"""`lorastack pull` refusals, --force and provenance; the client's errors, as CLI and library."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub.cli import main
from tests.e2e.helpers import publish

ROOT = Path(__file__).resolve().parents[2]


def run(args, env, ok=True):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def lorastack(args, env) -> subprocess.CompletedProcess:
    """The real command in a child process (pipes, not a terminal), seeing this checkout."""
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], cwd=ROOT, env=child_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty folder for the test's files (tmp_path also holds the hub's data)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def hub_env(client, live_server, make_user, lora_dir):
    token = make_user("alice")
    assert publish(client, token, "alice/tiny", "1.0.0", lora_dir).status_code == 201
    return {"LORASTACK_ENDPOINT": live_server, "LORASTACK_TOKEN": token}


def test_pull_writes_a_provenance_file_matching_the_files(hub_env, live_server, lora_dir,
                                                          work):
    out = work / "pulled"
    run(["pull", "alice/tiny@1.0.0", str(out)], hub_env)
    record = json.loads((out / ".lorastack.json").read_text())
    assert {key: record[key] for key in ("adapter", "version", "license", "endpoint")} == {
        "adapter": "alice/tiny", "version": "1.0.0", "license": "apache-2.0",
        "endpoint": live_server}
    assert record["pulled_at"].endswith("Z")
    assert record["files"] == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                               for path in lora_dir.iterdir()}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".lorastack.json", *(p.name for p in lora_dir.iterdir())])
    assert [p.name for p in work.iterdir()] == ["pulled"]  # no staging folder left


def test_pull_records_the_name_and_link_of_an_other_licence(client, hub_env, lora_dir,
                                                            tmp_path):
    assert publish(client, hub_env["LORASTACK_TOKEN"], "alice/custom", "1", lora_dir,
                   license="other", license_name="Acme Weights Licence",
                   license_link="https://acme.example/licence").status_code == 201
    run(["pull", "alice/custom", str(tmp_path / "c")], hub_env)
    record = json.loads((tmp_path / "c" / ".lorastack.json").read_text())
    assert (record["license"], record["license_name"], record["license_link"]) == (
        "other", "Acme Weights Licence", "https://acme.example/licence")


def test_pull_refuses_a_file_or_a_non_empty_folder_in_one_line(hub_env, work):
    a_file = work / "weights.txt"
    a_file.write_text("mine")
    folder = work / "adapter"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine too")
    for target, says in ((a_file, "is a file"), (folder, "is not empty (notes.txt)")):
        result = lorastack(["pull", "alice/tiny", str(target)], hub_env)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith("Error: ") and says in result.stderr
        assert "--force" in result.stderr and "Traceback" not in result.stderr
    assert a_file.read_text() == "mine"
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in work.iterdir()) == ["adapter", "weights.txt"]


def test_pull_force_overwrites_the_adapter_files_and_keeps_the_others(hub_env, lora_dir,
                                                                      tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "adapter_model.safetensors").write_bytes(b"stale weights")
    (folder / "README.md").write_text("# a README of some other version\n")
    run(["pull", "alice/tiny", str(folder), "--force"], hub_env)
    for path in lora_dir.iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes()
    assert (folder / "notes.txt").read_text() == "mine"
    assert not (folder / "README.md").exists()  # the version has none: not left to mislead
    a_file = tmp_path / "target"
    a_file.write_text("in the way")
    run(["pull", "alice/tiny", str(a_file), "--force"], hub_env)
    assert (a_file / "adapter_model.safetensors").is_file()


def test_pull_and_push_print_no_progress_when_not_on_a_terminal(hub_env, lora_dir, tmp_path):
    pulled = lorastack(["pull", "alice/tiny", str(tmp_path / "p")], hub_env)
    assert pulled.returncode == 0 and pulled.stderr == ""
    assert pulled.stdout == f"pulled alice/tiny@1.0.0 into {tmp_path / 'p'}\n"
    pushed = lorastack(["push", str(lora_dir), "alice/tiny", "--version", "2",
                        "--license", "mit"], hub_env)
    assert pushed.returncode == 0 and pushed.stderr == ""
    assert pushed.stdout.startswith("published alice/tiny@2 (")


def test_a_refused_or_missing_token_names_lorastack_token(hub_env, lora_dir):
    bad = run(["push", str(lora_dir), "alice/tiny", "--version", "2", "--license", "mit"],
              hub_env | {"LORASTACK_TOKEN": "not-a-token"}, ok=False)
    assert bad.exit_code == 1 and bad.output.startswith("Error: the hub refused the token")
    assert "set LORASTACK_TOKEN" in bad.output and bad.output.strip().endswith("(unauthorized)")
    unset = run(["yank", "alice/tiny@1.0.0"], hub_env | {"LORASTACK_TOKEN": ""}, ok=False)
    assert unset.exit_code == 1 and unset.output.startswith("Error: LORASTACK_TOKEN is not set")
    assert len(unset.output.strip().splitlines()) == 1


def test_an_unreachable_hub_is_one_line_naming_lorastack_endpoint(tmp_path):
    env = {"LORASTACK_ENDPOINT": "http://127.0.0.1:9", "LORASTACK_TOKEN": ""}
    for args in (["show", "alice/tiny"], ["pull", "alice/tiny", str(tmp_path / "x")]):
        result = lorastack(args, env)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("Error: cannot reach the hub at http://127.0.0.1:9")
        assert "LORASTACK_ENDPOINT" in result.stderr and "(hub_unreachable)" in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_the_client_library_raises_hub_error_classes(client, hub_env, live_server, make_user,
                                                     lora_dir):
    from hub.cli.http import HubClient
    from hub.errors import Forbidden, NotFound, Unauthorized

    anonymous = HubClient(live_server, token="")
    with pytest.raises(NotFound, match="alice/nope"):
        anonymous.get_json("/adapters/alice/nope")
    assert publish(client, hub_env["LORASTACK_TOKEN"], "alice/secret", "1", lora_dir,
                   metadata={"visibility": "private"}).status_code == 201
    with pytest.raises(NotFound):
        anonymous.get_json("/adapters/alice/secret/versions/1")
    with pytest.raises(Unauthorized):
        anonymous.post_json("/adapters/alice/tiny/versions/1.0.0/yank", {})
    reader = HubClient(live_server, token=make_user("alice", scope="read"))
    with pytest.raises(Forbidden) as caught:
        reader.post_json("/adapters/alice/tiny/versions/1.0.0/yank", {"reason": "x"})
    assert caught.value.status == 403 and caught.value.code == "forbidden"
