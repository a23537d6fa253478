"""`lorastack merge` and `lorastack merges` against a real hub over HTTP (inline worker)."""
from __future__ import annotations

import hashlib
import json
import re
import warnings

import pytest
from click.testing import CliRunner

from hub.cli import main, merge_remote
from tests.e2e.helpers import auth, publish

LINK = "https://example.com/combined-terms"


def run(args, env, ok=True, **kwargs):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False, **kwargs)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line_error(result, code: str) -> str:
    """The result is a one-line refusal ending in `(code)`, exit status 1; returns the line."""
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("Error: ") and line.endswith(f"({code})"), line
    return line


def merge_id_of(summary: str) -> str:
    return re.match(r"merge (\S+) on ", summary).group(1)


@pytest.fixture
def hub_env(client, live_server, make_user, lora_dir, other_lora_dir):
    """alice/a@1.0 (apache-2.0) and alice/b@2.0 (mit) on a hub served over HTTP."""
    token = make_user("alice")
    assert publish(client, token, "alice/a", "1.0", lora_dir).status_code == 201
    assert publish(client, token, "alice/b", "2.0", other_lora_dir,
                   license="mit").status_code == 201
    return {"LORASTACK_ENDPOINT": live_server, "LORASTACK_TOKEN": token}


@pytest.fixture
def queued_only(app):
    """No worker: merges stay queued."""
    app.extensions["lorastack"].queue.close()


@pytest.fixture
def ctrl_c_while_waiting(monkeypatch):
    """The wait's first pause raises KeyboardInterrupt, as Ctrl-C there would."""
    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_remote, "sleep", interrupt)


def test_merge_downloads_a_folder_peft_loads_with_the_merge_files(client, hub_env, tmp_path):
    from peft import PeftModel

    from tests.support.tiny_models import tiny_llama

    out = tmp_path / "work" / "merged"
    result = run(["merge", "alice/a:0.7", "alice/b@2.0:0.3", "--method", "linear",
                  "--rank", "4", "-o", str(out)], hub_env)
    assert result.stderr == ""  # no terminal: no progress
    summary = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1
    assert re.fullmatch(rf"merge \S+ on cpu: 6 modules, energy kept >= [01]\.\d{{4}}, into "
                        rf"{re.escape(str(out))}; licence other \(.+\)", summary), summary
    merge = client.get(f"/api/v1/merges/{merge_id_of(summary)}",
                       headers=auth(hub_env["LORASTACK_TOKEN"])).get_json()
    assert [(s["adapter"], s["version"], s["weight"]) for s in merge["spec"]["sources"]] == [
        ("alice/a", "1.0", 0.7), ("alice/b", "2.0", 0.3)]
    assert merge["spec"]["rank"] == 4
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == {
        f["path"]: f["sha256"] for f in merge["files"]}
    assert [p.name for p in out.parent.iterdir()] == ["merged"]  # no staging left behind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(tiny_llama(0), str(out))
    assert model.peft_config["default"].r == 4


def test_merge_with_output_delta_gives_delta_safetensors(hub_env, tmp_path):
    out = tmp_path / "delta"
    result = run(["merge", "alice/a", "alice/b:-1", "--output", "delta", "--dtype", "float32",
                  "-o", str(out)], hub_env)
    assert f"into {out};" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "delta.safetensors", "merge_report.json"]
    report = json.loads((out / "merge_report.json").read_text())
    assert [s["weight"] for s in report["sources"]] == [1.0, -1.0]


def test_publish_needs_a_link_for_a_combined_licence_then_makes_the_version_with_parents(
        client, hub_env, tmp_path):
    out = tmp_path / "mix"
    args = ["merge", "alice/a@1.0:0.5", "alice/b@2.0:0.5", "--rank", "4", "-o", str(out),
            "--publish", "alice/mix@1.0"]
    first = run(args, hub_env, ok=False)
    assert first.exit_code == 1 and first.stdout.startswith("merge ")  # the result is kept
    refusal = first.stderr.strip()
    assert len(refusal.splitlines()) == 1 and refusal.endswith("(invalid_request)")
    merge_id = merge_id_of(first.stdout)
    assert "pass it as --license-link URL" in refusal
    assert f"lorastack merges publish {merge_id} alice/mix@1.0 --license-link URL" in refusal
    again = run(args + ["--force", "--license-link", LINK], hub_env)
    assert again.stderr == f"reusing merge {merge_id} (succeeded): you asked for the same merge before\n"
    assert again.stdout.splitlines()[-1] == (
        "published alice/mix@1.0 (licence other; parents alice/a@1.0, alice/b@2.0)")
    version = client.get("/api/v1/adapters/alice/mix/versions/1.0").get_json()
    assert version["parents"] == [{"adapter": "alice/a", "version": "1.0", "weight": 0.5},
                                  {"adapter": "alice/b", "version": "2.0", "weight": 0.5}]
    assert version["license_link"] == LINK
    shown = run(["merges", "show", merge_id], hub_env).stdout
    assert "  published    alice/mix@1.0" in shown.splitlines()


def test_merges_show_prints_the_state_licence_reasons_files_and_report(client, hub_env,
                                                                       tmp_path):
    summary = run(["merge", "alice/a", "alice/b:0.5", "--method", "ties", "--density", "0.5",
                   "--majority-sign", "frequency", "-o", str(tmp_path / "t")], hub_env).stdout
    merge_id = merge_id_of(summary)
    lines = run(["merges", "show", merge_id], hub_env).stdout.splitlines()
    rows = dict(re.match(r"  (\S.*?)\s{2,}(.*)$", line).groups()
                for line in lines if re.match(r"  \S.*?\s{2,}", line))
    assert lines[0] == f"merge {merge_id} (succeeded)"
    assert rows["progress"] == "100% (6/6 modules)" and rows["method"] == "ties"
    assert "density 0.5" in rows["parameters"] and "majority_sign_method frequency" in rows[
        "parameters"]
    assert rows["device"] == "cpu" and rows["energy kept"].startswith(">= ")
    assert rows["elapsed"].endswith("s") and rows["licence"].startswith("other (")
    sources = lines[lines.index("  sources:") + 1:lines.index("  sources:") + 3]
    assert sources == ["    alice/a@1.0:1", "    alice/b@2.0:0.5"]
    assert "  licence reasons:" in lines and "    alice/a@1.0 is under apache-2.0" in lines
    merge = json.loads(run(["merges", "show", merge_id, "--json"], hub_env).stdout)
    for file in merge["files"]:
        assert any(line.strip().startswith(file["path"]) and line.endswith(file["sha256"])
                   for line in lines), file


def test_merges_list_show_and_cancel_a_queued_merge(hub_env, queued_only, ctrl_c_while_waiting,
                                                    tmp_path):
    out = tmp_path / "never"
    interrupted = run(["merge", "alice/a", "-o", str(out)], hub_env, ok=False)
    merge_id = re.search(r"merge (\S+) continues on", interrupted.stderr).group(1)
    listed = run(["merges", "list"], hub_env).stdout.splitlines()
    assert listed[0].split() == ["ID", "STATUS", "METHOD", "SOURCES", "CREATED", "DEVICE"]
    assert listed[1].split()[:4] == [merge_id, "queued", "linear", "alice/a@1.0:1"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed[1].split()[4])
    assert listed[1].split()[-1] == "-"
    shown = run(["merges", "show", merge_id], hub_env).stdout
    assert shown.startswith(f"merge {merge_id} (queued)\n") and "    alice/a@1.0:1" in shown
    cancelled = run(["merges", "cancel", merge_id], hub_env)
    assert cancelled.stdout == f"cancelled merge {merge_id}\n"
    shown = run(["merges", "show", merge_id], hub_env).stdout
    assert shown.splitlines()[0] == f"merge {merge_id} (cancelled)"
    assert shown.splitlines()[-1].endswith("(merge_cancelled)")
    items = json.loads(run(["merges", "list", "--json", "--limit", "1"], hub_env).stdout)
    assert [item["status"] for item in items] == ["cancelled"]
    assert not out.exists()


def test_ctrl_c_without_a_terminal_leaves_the_merge_running_and_says_how_to_cancel(
        client, hub_env, queued_only, ctrl_c_while_waiting, tmp_path):
    result = run(["merge", "alice/a", "-o", str(tmp_path / "x")], hub_env, ok=False)
    assert result.exit_code == 130 and result.stdout == ""
    merge_id = re.search(r"merge (\S+) continues on", result.stderr).group(1)
    assert f"`lorastack merges cancel {merge_id}`" in result.stderr
    merge = client.get(f"/api/v1/merges/{merge_id}",
                       headers=auth(hub_env["LORASTACK_TOKEN"])).get_json()
    assert merge["status"] == "queued"


def test_ctrl_c_on_a_terminal_asks_and_cancels_the_merge_on_yes(
        client, hub_env, queued_only, ctrl_c_while_waiting, monkeypatch, tmp_path):
    monkeypatch.setattr(merge_remote, "stdin_is_terminal", lambda: True)
    result = run(["merge", "alice/a", "-o", str(tmp_path / "x")], hub_env, ok=False,
                 input="y\n")
    assert result.exit_code == 130
    merge_id = re.search(r"Cancel merge (\S+) on the hub\? \[y/N\]", result.stderr).group(1)
    assert result.stderr.endswith(f"cancelled merge {merge_id}\n")
    merge = client.get(f"/api/v1/merges/{merge_id}",
                       headers=auth(hub_env["LORASTACK_TOKEN"])).get_json()
    assert merge["status"] == "cancelled"


def test_a_refused_merge_is_one_line_with_its_code(client, hub_env, tmp_path):
    from tests.support.adapters import save_lora

    out = tmp_path / "x"
    unknown = one_line_error(run(["merge", "alice/a", "alice/nope", "-o", str(out)], hub_env,
                                 ok=False), "not_found")
    assert "alice/nope" in unknown
    other = save_lora(tmp_path / "other-base", seed=3)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "another-model"
    (other / "adapter_config.json").write_text(json.dumps(config))
    assert publish(client, hub_env["LORASTACK_TOKEN"], "alice/other", "1",
                   other).status_code == 201
    incompatible = one_line_error(run(["merge", "alice/a", "alice/other", "-o", str(out)],
                                      hub_env, ok=False), "incompatible_adapters")
    assert "another-model" in incompatible
    one_line_error(run(["merge", "alice/a:heavy", "-o", str(out)], hub_env, ok=False),
                   "invalid_merge")
    one_line_error(run(["merge", "alice/a", "--method", "ties", "-o", str(out)], hub_env,
                       ok=False), "invalid_merge")
    assert not out.exists()


def test_a_merge_that_fails_on_the_worker_prints_its_code_and_detail(hub_env, tmp_path):
    result = run(["merge", "alice/a:1e30", "alice/b:1e30", "--dtype", "float16",
                  "-o", str(tmp_path / "x")], hub_env, ok=False)
    line = one_line_error(result, "invalid_merge")
    assert re.match(r"Error: merge \S+ failed: .*float16", line), line
    assert not (tmp_path / "x").exists()


def test_merge_onto_a_non_empty_folder_refuses_unless_forced(client, hub_env, tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "adapter_model.safetensors").write_bytes(b"stale")
    (folder / ".lorastack.json").write_text("{}")
    refused = run(["merge", "alice/a", "-o", str(folder)], hub_env, ok=False)
    assert refused.exit_code == 1 and "is not empty" in refused.stderr
    assert "--force" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    listed = client.get("/api/v1/merges", headers=auth(hub_env["LORASTACK_TOKEN"])).get_json()
    assert listed["items"] == []  # refused before asking the hub for anything
    run(["merge", "alice/a", "--output", "delta", "-o", str(folder), "--force"], hub_env)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "delta.safetensors", "merge_report.json", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"


def test_publish_of_a_delta_is_refused_before_merging(client, hub_env, tmp_path):
    result = run(["merge", "alice/a", "--output", "delta", "-o", str(tmp_path / "d"),
                  "--publish", "alice/d@1"], hub_env, ok=False)
    assert result.exit_code == 1 and "--publish needs --output lora" in result.stderr
    listed = client.get("/api/v1/merges", headers=auth(hub_env["LORASTACK_TOKEN"])).get_json()
    assert listed["items"] == []
