"""merge-local knows the licences of pulled sources from their .lorastack.json, offline."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hub.cli import main
from tests.e2e.helpers import publish


def run(args, env=None, ok=True):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def pulled(client, live_server, make_user, lora_dir, other_lora_dir, tmp_path):
    """Folders pulled from the hub: a (apache-2.0), b (mit), nd (cc-by-nd-4.0)."""
    token = make_user("alice")
    env = {"LORASTACK_ENDPOINT": live_server, "LORASTACK_TOKEN": token}
    folders = {}
    for name, source, licence in (("a", lora_dir, "apache-2.0"), ("b", other_lora_dir, "mit"),
                                  ("nd", lora_dir, "cc-by-nd-4.0")):
        assert publish(client, token, f"alice/{name}", "1", source,
                       license=licence).status_code == 201
        folders[name] = tmp_path / "pulled" / name
        run(["pull", f"alice/{name}@1", str(folders[name])], env)
    return folders


def test_merge_local_reports_the_licences_of_pulled_sources(pulled, tmp_path):
    out = tmp_path / "merged"
    result = run(["merge-local", f"{pulled['a']}:0.5", f"{pulled['b']}:0.5", "--device", "cpu",
                  "-o", str(out)])
    assert result.stderr == ""
    assert result.stdout.splitlines()[-1] == (
        "licence of the result: Combination of apache-2.0, mit (derived from apache-2.0, mit)")
    report = json.loads((out / "merge_report.json").read_text())
    assert [(s["adapter"], s["version"], s["license"]) for s in report["sources"]] == [
        ("alice/a", "1", "apache-2.0"), ("alice/b", "1", "mit")]
    assert report["licenses"] == ["apache-2.0", "mit"]
    assert report["license"]["id"] == "other" and report["license"]["commercial_use"] is True
    assert report["license"]["sources"] == ["apache-2.0", "mit"]


def test_merge_local_refuses_a_no_derivatives_source_naming_it(pulled, tmp_path):
    out = tmp_path / "merged"
    result = run(["merge-local", str(pulled["a"]), str(pulled["nd"]), "--device", "cpu",
                  "-o", str(out)], ok=False)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    message = result.output.strip()
    assert message.startswith(f"Error: alice/nd@1 ({pulled['nd']}) (cc-by-nd-4.0)")
    assert "forbids derivative works" in message
    assert f"{pulled['nd'] / '.lorastack.json'}: if you own the adapter" in message
    assert not out.exists()


def test_a_folder_changed_since_the_pull_has_its_provenance_ignored(pulled, tmp_path):
    config = pulled["nd"] / "adapter_config.json"
    config.write_text(config.read_text() + "\n")
    out = tmp_path / "merged"
    result = run(["merge-local", str(pulled["a"]), str(pulled["nd"]), "--device", "cpu",
                  "-o", str(out)])
    assert result.stderr == (
        f"Warning: {pulled['nd']} has changed since it was pulled as alice/nd@1 "
        f"(adapter_config.json differs): its .lorastack.json is ignored, so its licence is "
        f"not known from it\n")
    assert result.stdout.splitlines()[-1] == (
        f"licence of the result: unknown (no known licence for {pulled['nd']})")
    report = json.loads((out / "merge_report.json").read_text())
    assert [s["license"] for s in report["sources"]] == ["apache-2.0", None]
    assert "adapter" not in report["sources"][1]  # no longer that version
    assert report["license"] is None


def test_a_folder_never_pulled_is_judged_by_its_readme_licence(lora_dir, tmp_path):
    import shutil

    folder = tmp_path / "mine"
    shutil.copytree(lora_dir, folder)
    (folder / "README.md").write_text("---\nlicense: cc-by-nd-4.0\n---\n# Mine\n")
    result = run(["merge-local", str(folder), "--device", "cpu", "-o", str(tmp_path / "m")],
                 ok=False)
    assert result.exit_code == 1 and "forbids derivative works" in result.output
    assert f"read from {folder / 'README.md'}: if you own the adapter" in result.output
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# Mine\n")
    merged = run(["merge-local", str(folder), "--device", "cpu", "-o", str(tmp_path / "m")])
    assert merged.stdout.splitlines()[-1] == (
        "licence of the result: mit, MIT License (derived from mit)")
