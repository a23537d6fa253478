"""Every refusal: non-zero exit, one clear line, no traceback, nothing left behind."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from merge_fixtures import merge_device

from hub.cli.merge_local import merge_local

DEVICE = merge_device()


def _refused(tmp_path, args: list[str], *needles: str) -> str:
    parent = tmp_path / "outputs"
    parent.mkdir()
    out = parent / "merged"
    result = CliRunner().invoke(merge_local, [*args, "--device", DEVICE, "-o", str(out)])
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    assert not out.exists() and list(parent.iterdir()) == []
    return lines[0]


SOURCE_REFUSALS = {
    "dora": ("DoRA",),
    "lora_bias": ("lora_bias",),
    "bias_all": ("biases",),
    "modules_to_save": ("modules_to_save",),
    "loha": ("LOHA", "only LoRA"),
    "truncated": ("unreadable or truncated",),
    "not_safetensors": ("unreadable or truncated",),
    "bad_json": ("not readable JSON",),
    "no_config": ("no adapter_config.json",),
    "pickle_only": ("adapter_model.bin",),
    "nan": ("non-finite",),
    "rank_mismatch": ("config says 5",),
    "missing": ("not found",),
    "prefixed": ("weird.base_model.model.", "PEFT would ignore it"),
    "kohya": ("no adapter_config.json", "my_style.safetensors", "kohya", "lora_A.weight"),
    "renamed_weights": ("no adapter_model.safetensors", "model.safetensors"),
}


@pytest.mark.parametrize("name", sorted(SOURCE_REFUSALS))
def test_refuses_a_source_that_cannot_be_merged(adapters, bad_adapters, tmp_path, name):
    _refused(tmp_path, [str(adapters["llama_a"]), str(bad_adapters[name])], *SOURCE_REFUSALS[name])


def test_refuses_sources_trained_on_different_base_models(adapters, bad_adapters, tmp_path):
    _refused(tmp_path, [str(adapters["llama_a"]), str(bad_adapters["other_base"])],
             "different base models", "some-other-model")


def test_refuses_sources_whose_shapes_disagree_for_a_module(adapters, bad_adapters, tmp_path):
    line = _refused(tmp_path, [str(adapters["llama_b"]), str(bad_adapters["wide"])], "shape")
    assert "q_proj" in line


def test_refuses_mixing_conv1d_and_linear_layouts_when_no_base_model_is_named(adapters, tmp_path):
    unnamed = tmp_path / "unnamed"
    shutil.copytree(adapters["gpt2_a"], unnamed)
    config = json.loads((unnamed / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (unnamed / "adapter_config.json").write_text(json.dumps(config))
    _refused(tmp_path, [str(adapters["llama_a"]), str(unnamed)], "fan_in_fan_out")


@pytest.mark.parametrize("density", ["0", "-0.1", "1.5", "nan"])
def test_refuses_density_outside_zero_one(adapters, tmp_path, density):
    _refused(tmp_path, [str(adapters["llama_a"]), "--method", "ties", "--density", density], "density")


def test_refuses_a_dense_method_without_density(adapters, tmp_path):
    _refused(tmp_path, [str(adapters["llama_a"]), "--method", "dare_ties"], "density")


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_refuses_weights_that_are_not_finite(adapters, tmp_path, weight):
    _refused(tmp_path, [f"{adapters['llama_a']}:{weight}"], "finite")


@pytest.mark.parametrize("rank", ["0", "-3"])
def test_refuses_rank_below_one(adapters, tmp_path, rank):
    _refused(tmp_path, [str(adapters["llama_a"]), "--rank", rank], "rank")


def test_refuses_an_unknown_method(adapters, tmp_path):
    _refused(tmp_path, [str(adapters["llama_a"]), "--method", "average"], "unknown merge method")


def test_refuses_an_output_folder_that_is_not_empty(adapters, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(merge_local, [str(adapters["llama_a"]), "-o", str(out)])
    assert result.exit_code != 0 and "already exists" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_weight_that_is_not_a_number_is_named_as_such(adapters, tmp_path):
    # "DIR:abc" with DIR an adapter: a mistyped weight, not a folder named "DIR:abc".
    line = _refused(tmp_path, [f"{adapters['llama_a']}:0,5", str(adapters["llama_b"])],
                    "weight", "is not a number", "'0,5'")
    assert "not found" not in line


def test_a_file_given_as_a_source_is_called_a_file(adapters, tmp_path):
    _refused(tmp_path, [str(adapters["llama_a"] / "adapter_config.json")],
             "is a file", "the folder that holds adapter_config.json")


def test_an_output_under_a_file_or_an_unwritable_folder_is_refused_in_one_line(adapters, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = CliRunner().invoke(merge_local, [str(adapters["llama_a"]), "-o", str(blocker / "m")])
    assert result.exit_code != 0
    assert result.output.strip() == f"Error: output parent {blocker} is not a folder (invalid_merge)"
    # A folder nobody may create files in, root included (a read-only mount would do too).
    proc = Path("/proc")
    if not proc.is_dir():
        pytest.skip("no /proc here")
    result = CliRunner().invoke(merge_local, [str(adapters["llama_a"]), "-o", str(proc / "lorastack-m")])
    assert result.exit_code != 0
    assert result.output.strip().startswith("Error: cannot write the output in /proc: ")
    assert "merge failed" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["--dtype", "int8"], "int8"),
    (["--rank", "many"], "many"),
    (["--output", "dense"], "dense"),
])
def test_refuses_bad_option_values_in_one_line_without_usage_text(adapters, tmp_path, args, needle):
    _refused(tmp_path, [str(adapters["llama_a"]), *args], needle)


@pytest.mark.skipif(DEVICE == "cuda", reason="only meaningful without a GPU")
def test_refuses_device_cuda_without_a_gpu(adapters, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    parent = tmp_path / "outputs"
    parent.mkdir()
    result = CliRunner().invoke(merge_local, [str(adapters["llama_a"]), "--device", "cuda",
                                              "-o", str(parent / "m")])
    assert result.exit_code != 0 and result.output.strip() == \
        "Error: device cuda was asked for but no CUDA GPU is available (invalid_merge)"
    assert list(parent.iterdir()) == []


def _scaled(tmp_path, source, factor: float):
    """A copy of `source` with every factor multiplied by `factor` (float32)."""
    from safetensors.torch import load_file, save_file

    target = tmp_path / f"scaled_{factor:g}"
    shutil.copytree(source, target)
    weights = target / "adapter_model.safetensors"
    tensors = {k: v.float() * factor for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    return target


@pytest.mark.parametrize("args", [
    ["--method", "ties", "--density", "0.5", "--output", "delta"],
    ["--method", "linear", "--output", "delta"],
])
def test_refuses_a_delta_beyond_the_output_dtype_instead_of_writing_inf(adapters, tmp_path, args):
    huge = _scaled(tmp_path, adapters["llama_a"], 3000.0)
    _refused(tmp_path, [str(huge), *args, "--dtype", "float16"], "module model.", "float16 holds", "65504",
             "float32 or bfloat16")
    parent = tmp_path / "wide"
    result = CliRunner().invoke(merge_local, [str(huge), *args, "--dtype", "float32", "--device", DEVICE,
                                              "-o", str(parent)])
    assert result.exit_code == 0, result.output


def test_refuses_lora_factors_beyond_float16(adapters, tmp_path):
    huge = _scaled(tmp_path, adapters["llama_a"], 1e5)
    _refused(tmp_path, [str(huge), "--dtype", "float16"], "float16 holds", "float32 or bfloat16")


def test_bfloat16_beyond_its_range_is_refused_pointing_to_float32_only():
    from types import SimpleNamespace

    import torch

    from hub.errors import InvalidMerge
    from hub.merge.engine import _in_dtype

    plan = SimpleNamespace(name="m", parts=[])
    fits = torch.tensor([3.3e38, -1.0])
    assert _in_dtype(plan, [], fits, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(InvalidMerge) as refused:
        _in_dtype(plan, [], torch.tensor([3.4e38, -1.0]), torch.bfloat16)  # rounds up to inf
    assert "bfloat16 holds" in refused.value.detail and "choose dtype float32" in refused.value.detail
    assert "or bfloat16" not in refused.value.detail


def test_singular_values_beyond_float32_do_not_refuse_factors_that_fit(adapters, tmp_path):
    # Factors of 1e19 give singular values past float32's range (kept in float64 for the
    # rank and the energy); the balanced output factors still fit float32.
    from safetensors.torch import load_file

    huge = _scaled(tmp_path, adapters["llama_a"], 1.5e19)
    for folder, out in ((adapters["llama_a"], tmp_path / "plain"), (huge, tmp_path / "huge")):
        result = CliRunner().invoke(merge_local, [str(folder), "--rank", "2", "--dtype", "float32",
                                                  "--device", DEVICE, "-o", str(out)])
        assert result.exit_code == 0, result.output
    plain, scaled = (load_file(str(tmp_path / n / "adapter_model.safetensors")) for n in ("plain", "huge"))
    key_b = next(k for k in plain if k.endswith("q_proj.lora_B.weight"))
    key_a = key_b.replace("lora_B", "lora_A")
    expected = (plain[key_b].double() @ plain[key_a].double()) * 1.5e19 ** 2
    got = scaled[key_b].double() @ scaled[key_a].double()
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_refuses_an_update_that_overflows_float32(adapters, tmp_path):
    huge = _scaled(tmp_path, adapters["llama_a"], 1e20)
    _refused(tmp_path, [str(huge), "--output", "delta", "--dtype", "float32"], "not finite",
             "overflows float32", huge.name)
