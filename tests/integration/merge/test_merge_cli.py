"""`lorastack merge-local` end to end: arguments, outputs, fast start, clean library imports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from merge_fixtures import merge_device, read_json
from safetensors.torch import load_file

from hub.cli.merge_local import _Progress, merge_local, parse_source
from hub.errors import InvalidMerge

DEVICE = merge_device()
ROOT = Path(__file__).resolve().parents[3]


def test_merge_local_writes_a_peft_folder_and_a_report(adapters, tmp_path):
    out = tmp_path / "merged"
    result = CliRunner().invoke(merge_local, [
        f"{adapters['llama_a']}:0.5", f"{adapters['llama_b']}:-1", "--method", "ties",
        "--density", "0.4", "--majority-sign-method", "frequency", "--rank", "3", "--seed", "5",
        "--dtype", "bfloat16", "--device", DEVICE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "merged 2 adapters (ties)" in result.output
    report = read_json(out / "merge_report.json")
    assert [s["weight"] for s in report["sources"]] == [0.5, -1.0]
    assert report["params"] == {"rank": 3, "density": 0.4, "majority_sign_method": "frequency",
                                "seed": 5, "output": "lora", "dtype": "bfloat16"}
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert max(t.shape[0] for k, t in tensors.items() if "lora_A" in k) <= 3


def test_merge_local_delta_output_is_keyed_by_base_weight_names(adapters, tmp_path):
    out = tmp_path / "delta"
    result = CliRunner().invoke(merge_local, [str(adapters["gpt2_a"]), "--output", "delta",
                                              "--device", DEVICE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["delta.safetensors", "merge_report.json"]
    delta = load_file(str(out / "delta.safetensors"))
    assert delta["transformer.wte.weight"].shape == (100, 32)
    assert delta["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in x out)


def test_merge_local_accepts_an_empty_existing_output_folder(adapters, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    result = CliRunner().invoke(merge_local, [str(adapters["llama_a"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "adapter_config.json").is_file()


@pytest.mark.parametrize("arg,path,weight", [
    ("a/b", "a/b", 1.0),
    ("a/b:0.25", "a/b", 0.25),
    ("a/b:-2", "a/b", -2.0),
    ("a:b/c", "a:b/c", 1.0),
    ("dir:with:colons:1e-1", "dir:with:colons", 0.1),
    ("C:/models/x", "C:/models/x", 1.0),
])
def test_source_argument_splits_on_the_last_colon_only_before_a_number(arg, path, weight):
    spec = parse_source(arg)
    assert str(spec.path) == str(Path(path)) and spec.weight == weight


def test_source_argument_refuses_a_non_finite_weight():
    with pytest.raises(InvalidMerge, match="finite"):
        parse_source("a:nan")


def test_progress_shows_the_time_left_once_it_can_be_estimated(capsys):
    now = [100.0]
    progress = _Progress(enabled=True, clock=lambda: now[0])
    progress(0.0)
    now[0] = 101.0
    progress(0.05)  # a second in: too early to guess
    now[0] = 130.0
    progress(0.2)  # 30 s for a fifth: 2 minutes left
    progress(0.2)  # same percentage: nothing redrawn
    now[0] = 249.0
    progress(0.99)
    progress(1.0)
    lines = capsys.readouterr().err.split("\r")[1:]
    assert [line.rstrip() for line in lines] == [
        "merging...   0%", "merging...   5%", "merging...  20%, about 2m00s left",
        "merging...  99%, about 2s left", "merging... 100%"]
    assert lines[-1].endswith("\n") and len(lines[-1].rstrip("\n")) >= len(lines[-2].rstrip())


def test_progress_is_silent_when_stderr_is_not_a_terminal(capsys):
    progress = _Progress(enabled=False)
    progress(0.5)
    progress(1.0)
    assert capsys.readouterr().err == ""


def test_cli_module_starts_without_importing_torch():
    code = "import sys, hub.cli.merge_local; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_merge_library_alone_imports_no_flask_sqlalchemy_or_boto3():
    code = ("import sys, json, hub.merge; from hub.merge import merge; "
            "import hub.merge.engine, hub.merge.sources, hub.merge.dense, hub.merge.writer; "
            "print(json.dumps(sorted(n for n in ('flask', 'sqlalchemy', 'boto3', 'botocore', 'click', "
            "'peft', 'transformers') if n in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_a_refusal_from_the_real_process_is_one_line_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from hub.cli.merge_local import merge_local; merge_local()",
                          str(tmp_path / "nope"), "-o", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [f"Error: adapter folder not found: {tmp_path / 'nope'} (missing_file)"]
    assert not (tmp_path / "out").exists()
