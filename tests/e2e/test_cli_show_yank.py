"""`lorastack show`, `yank`, `unyank` and a pull of a yanked version, against a real hub."""
from __future__ import annotations

import json
import re

from click.testing import CliRunner

from hub.cli import main
from tests.e2e.helpers import publish


def run(args, env, ok=True):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _hub(client, live_server, make_user, lora_dir, other_lora_dir):
    token = make_user("alice")
    assert publish(client, token, "alice/tiny", "1.0.0", lora_dir,
                   metadata={"description": "a tiny test adapter", "tags": ["demo"],
                             "task": "text-generation"}).status_code == 201
    assert publish(client, token, "alice/tiny", "1.1.0", other_lora_dir,
                   license="mit").status_code == 201
    return {"LORASTACK_ENDPOINT": live_server, "LORASTACK_TOKEN": token}


def test_show_prints_the_adapter_with_versions_newest_first(client, live_server, make_user,
                                                            lora_dir, other_lora_dir):
    env = _hub(client, live_server, make_user, lora_dir, other_lora_dir)
    run(["yank", "alice/tiny@1.0.0", "--reason", "wrong base model"], env)
    out = run(["show", "alice/tiny"], env).output
    assert out.startswith("alice/tiny (public)\n")
    for text in ("a tiny test adapter", "tiny-llama", "demo", "text-generation"):
        assert text in out, text
    versions = out.split("newest first):\n")[1].splitlines()
    assert versions[0].split()[0] == "1.1.0" and "YANKED" not in versions[0]
    assert versions[1].split()[0] == "1.0.0"
    assert versions[1].endswith("YANKED: wrong base model")


def test_show_of_a_version_prints_its_parameters_and_files(client, live_server, make_user,
                                                           lora_dir, other_lora_dir):
    import hashlib

    env = _hub(client, live_server, make_user, lora_dir, other_lora_dir)
    out = run(["show", "alice/tiny@1.0.0"], env).output
    rows = dict(re.match(r"  (\S.*?)\s{2,}(.*)$", line).groups()
                for line in out.splitlines()[1:] if re.match(r"  \S.*?\s{2,}", line))
    assert out.splitlines()[0] == "alice/tiny@1.0.0"
    assert rows["rank"] == "4" and rows["alpha"] == "8" and rows["mergeable"] == "yes"
    assert rows["target modules"] in ("q_proj, v_proj", "v_proj, q_proj")
    assert rows["licence"] == "apache-2.0" and rows["parameters"].replace(",", "").isdigit()
    for path in lora_dir.iterdir():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert any(path.name in line and f"sha256 {digest}" in line for line in out.splitlines())


def test_show_json_prints_the_raw_api_bodies(client, live_server, make_user, lora_dir,
                                             other_lora_dir):
    env = _hub(client, live_server, make_user, lora_dir, other_lora_dir)
    adapter = json.loads(run(["show", "alice/tiny", "--json"], env).output)
    assert adapter == client.get("/api/v1/adapters/alice/tiny").get_json() | {
        "downloads": adapter["downloads"]}
    version = json.loads(run(["show", "alice/tiny@latest", "--json"], env).output)
    assert version["version"] == "1.1.0" and version["license"] == "mit"


def test_yank_and_unyank_move_latest_and_search(client, live_server, make_user, lora_dir,
                                                other_lora_dir):
    env = _hub(client, live_server, make_user, lora_dir, other_lora_dir)

    def latest():
        return json.loads(run(["search", "tiny", "--json"], env).output)[0]["latest_version"]

    yanked = run(["yank", "alice/tiny@1.1.0", "--reason", "leaks eval data"], env)
    assert yanked.output == "yanked alice/tiny@1.1.0: leaks eval data\n"
    assert latest() == "1.0.0"
    shown = json.loads(run(["show", "alice/tiny@1.1.0", "--json"], env).output)
    assert shown["yanked"] is True and shown["yank_reason"] == "leaks eval data"
    assert run(["unyank", "alice/tiny@1.1.0"], env).output == "unyanked alice/tiny@1.1.0\n"
    assert latest() == "1.1.0"


def test_yank_refuses_a_ref_without_a_version_in_one_line(client, live_server, make_user,
                                                          lora_dir, other_lora_dir):
    env = _hub(client, live_server, make_user, lora_dir, other_lora_dir)
    for args in (["yank", "alice/tiny"], ["yank", "alice/tiny@latest"],
                 ["unyank", "alice/tiny@"]):
        result = run(args, env, ok=False)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "names no version" in result.output
    other = make_user("bob")
    refused = run(["yank", "alice/tiny@1.0.0"], env | {"LORASTACK_TOKEN": other}, ok=False)
    assert refused.exit_code == 1 and "(forbidden)" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_pull_of_a_yanked_version_warns_with_the_reason(client, live_server, make_user,
                                                        lora_dir, other_lora_dir, tmp_path):
    env = _hub(client, live_server, make_user, lora_dir, other_lora_dir)
    run(["yank", "alice/tiny@1.0.0", "--reason", "wrong base model"], env)
    result = run(["pull", "alice/tiny@1.0.0", str(tmp_path / "old")], env)
    assert result.stderr == "Warning: alice/tiny@1.0.0 is yanked: wrong base model\n"
    assert result.stdout == f"pulled alice/tiny@1.0.0 into {tmp_path / 'old'}\n"
    latest = run(["pull", "alice/tiny", str(tmp_path / "new")], env)
    assert latest.stderr == "" and "alice/tiny@1.1.0" in latest.stdout
