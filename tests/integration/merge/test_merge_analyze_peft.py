"""The source analysis on adapters PEFT saved, against dense float64 updates built from PEFT."""
from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
import torch
from merge_fixtures import BASES, merge_device
from safetensors.torch import load_file, save_file

from hub.errors import IncompatibleAdapters, InvalidMerge, NonFiniteWeights
from hub.merge import MergeSpec, SourceSpec, merge
from hub.merge.analyze import analyze

DEVICE = merge_device()
# rsLoRA (b), rank and alpha patterns in bfloat16 (c), float16 (half), negative weights.
LLAMA_MIX = [("llama_a", 0.7), ("llama_b", -0.4), ("llama_c", 1.3), ("llama_half", -2.0)]
GPT2_MIX = [("gpt2_a", 1.0), ("gpt2_b", -0.5)]


def _peft_updates(family: str, folder) -> dict[str, torch.Tensor]:
    """Each module's `scaling * B @ A` in float64, from the factors and scaling PEFT loaded."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(BASES[family](0), str(folder))
    out = {}
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)  # attention layers have a float `scaling`
        if not isinstance(scaling, dict) or "default" not in scaling:
            continue
        if "default" in getattr(module, "lora_embedding_A", {}):
            a, b = module.lora_embedding_A["default"], module.lora_embedding_B["default"]
        else:
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        out[name[len("base_model.model."):]] = scaling["default"] * (b.double() @ a.double())
    return out


@pytest.fixture(scope="session")
def updates(adapters) -> dict[str, dict[str, torch.Tensor]]:
    """Dense float64 updates of every fixture adapter (tiny shapes only)."""
    return {name: _peft_updates("gpt2" if name.startswith("gpt2") else "llama", path)
            for name, path in adapters.items()}


def _analyze(adapters, mix, **kwargs) -> dict:
    result = analyze([SourceSpec(adapters[name], w) for name, w in mix], device=DEVICE, **kwargs)
    json.dumps(result, allow_nan=False)  # JSON-ready: no NaN or inf anywhere
    return result


def _numel(weighted: list[dict], module: str) -> int:
    return next(u[module].numel() for u in weighted if module in u)


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float((u * v).sum() / (u.norm() * v.norm()))


@pytest.mark.parametrize("mix", [LLAMA_MIX, GPT2_MIX], ids=["llama", "gpt2"])
def test_norms_and_cosines_equal_those_of_the_dense_float64_updates(adapters, updates, mix):
    result = _analyze(adapters, mix)
    weighted = [{m: w * u for m, u in updates[name].items()} for name, w in mix]
    modules = {m["module"]: m for m in result["modules"]}
    assert set(modules) == set().union(*weighted)
    for module, entry in modules.items():
        for i, ui in enumerate(weighted):
            if module not in ui:
                assert entry["norms"][i] is None and entry["cosine"][i] == [None] * len(mix)
                continue
            assert entry["norms"][i] == pytest.approx(float(ui[module].norm()), rel=1e-10)
            for j, uj in enumerate(weighted):
                if module not in uj:
                    assert entry["cosine"][i][j] is None
                    continue
                expected = _cosine(ui[module], uj[module])
                assert entry["cosine"][i][j] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # Overall: the updates concatenated over modules (zero where a source has none).
    flat = [torch.cat([u[m].flatten() if m in u else torch.zeros(_numel(weighted, m), dtype=torch.float64)
                       for m in sorted(modules)]) for u in weighted]
    for i, source in enumerate(result["sources"]):
        assert source["weight"] == mix[i][1]
        assert source["norm"] == pytest.approx(float(flat[i].norm()), rel=1e-10)
        for j in range(len(mix)):
            assert result["cosine"][i][j] == pytest.approx(_cosine(flat[i], flat[j]), rel=1e-9, abs=1e-12)
    assert result["summary"]["merged_norm"] == pytest.approx(float(sum(flat).norm()), rel=1e-9)


def test_a_negative_weight_flips_the_cosines_and_scales_the_norm_by_its_magnitude(adapters):
    plus = _analyze(adapters, [("llama_a", 1.0), ("llama_c", 0.5)])
    minus = _analyze(adapters, [("llama_a", 1.0), ("llama_c", -1.5)])
    assert minus["sources"][1]["norm"] == pytest.approx(3 * plus["sources"][1]["norm"], rel=1e-12)
    assert minus["cosine"][0][1] == pytest.approx(-plus["cosine"][0][1], rel=1e-12)
    for before, after in zip(plus["modules"], minus["modules"]):
        if after["cosine"][0][1] is not None:
            assert after["cosine"][0][1] == pytest.approx(-before["cosine"][0][1], rel=1e-12)


def test_an_adapter_with_itself_has_cosine_one_everywhere(adapters):
    result = _analyze(adapters, [("llama_b", 1.0), ("llama_b", 0.3)])
    assert result["cosine"][0][1] == pytest.approx(1.0, abs=1e-12)
    assert all(m["cosine"][0][1] == pytest.approx(1.0, abs=1e-12) for m in result["modules"])
    assert result["summary"]["opposed"] == [] and result["summary"]["only_in"] == []


def _copy_with(adapters, tmp_path, name: str, change) -> SourceSpec:
    folder = tmp_path / name
    shutil.copytree(adapters["llama_a"], folder)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: change(k, v) for k, v in tensors.items()}, str(weights))
    return SourceSpec(folder, 1.0)


def test_an_adapter_and_its_negation_have_cosine_minus_one_and_are_called_opposed(adapters, tmp_path):
    negated = _copy_with(adapters, tmp_path, "negated",
                         lambda k, v: -v if k.endswith(("lora_B.weight", "lora_embedding_B")) else v)
    result = analyze([SourceSpec(adapters["llama_a"], 1.0), negated], labels=["a", "minus a"], device=DEVICE)
    assert result["cosine"][0][1] == pytest.approx(-1.0, abs=1e-12)
    assert all(m["cosine"][0][1] == pytest.approx(-1.0, abs=1e-12) for m in result["modules"])
    assert result["sources"][0]["norm"] == pytest.approx(result["sources"][1]["norm"], rel=1e-12)
    assert result["summary"]["merged_norm"] < 1e-6 * result["sources"][0]["norm"]
    [pair] = result["summary"]["opposed"]
    assert pair["sources"] == ["a", "minus a"] and pair["modules_opposed"] == pair["modules_shared"]
    assert any("pull against each other" in text for text in result["summary"]["findings"])


def test_an_adapter_weighted_minus_one_with_itself_has_cosine_minus_one(adapters):
    result = _analyze(adapters, [("llama_half", 1.0), ("llama_half", -1.0)])
    assert result["cosine"][0][1] == pytest.approx(-1.0, abs=1e-12)
    assert "negative" in result["summary"]["findings"][0]


def test_a_zero_update_has_norm_zero_and_no_cosines(adapters, tmp_path):
    # PEFT's default initialisation: B = 0, an adapter that changes nothing.
    zero = _copy_with(adapters, tmp_path, "zero",
                      lambda k, v: torch.zeros_like(v) if "_B" in k else v)
    result = analyze([SourceSpec(adapters["llama_a"], 1.0), zero], labels=["a", "untrained"], device=DEVICE)
    json.dumps(result, allow_nan=False)
    assert result["sources"][1]["norm"] == 0.0
    assert result["cosine"][1] == [None, None] and result["cosine"][0] == [1.0, None]
    assert all(m["norms"][1] == 0.0 and m["cosine"][1] == [None, None] for m in result["modules"])
    assert result["summary"]["zero"] == ["untrained"]


def test_a_zero_weight_makes_a_zero_update(adapters):
    result = _analyze(adapters, [("llama_a", 1.0), ("llama_c", 0.0)])
    assert result["sources"][1]["norm"] == 0.0 and result["cosine"][0][1] is None
    assert result["summary"]["zero"] == [str(adapters["llama_c"])]


def test_modules_only_one_source_adapts_have_null_entries_and_are_listed(adapters):
    result = _analyze(adapters, [("llama_a", 1.0), ("llama_b", 1.0)], labels=["a", "b"])
    modules = {m["module"]: m for m in result["modules"]}
    k_proj = modules["model.layers.0.self_attn.k_proj"]
    assert k_proj["norms"][0] is None and k_proj["norms"][1] > 0
    assert k_proj["cosine"] == [[None, None], [None, 1.0]]
    lone = {entry["source"]: set(entry["modules"]) for entry in result["summary"]["only_in"]}
    assert "model.embed_tokens" in lone["a"] and "model.layers.1.mlp.down_proj" in lone["b"]
    assert "model.layers.0.self_attn.q_proj" not in lone["a"] | lone["b"]
    assert [s["modules"] for s in result["sources"]] == [
        sum(m["norms"][i] is not None for m in result["modules"]) for i in range(2)]


def test_sources_whose_shapes_disagree_are_refused_as_the_merge_refuses_them(adapters, bad_adapters):
    specs = [SourceSpec(adapters["llama_b"], 1.0), SourceSpec(bad_adapters["wide"], 1.0)]
    with pytest.raises(IncompatibleAdapters) as merged:
        merge(specs, MergeSpec(device=DEVICE))
    with pytest.raises(IncompatibleAdapters) as analyzed:
        analyze(specs, device=DEVICE)
    assert str(analyzed.value) == str(merged.value)


def test_non_finite_factors_are_refused(adapters, bad_adapters):
    with pytest.raises(NonFiniteWeights, match="non-finite"):
        analyze([SourceSpec(adapters["llama_a"], 1.0), SourceSpec(bad_adapters["nan"], 1.0)], device=DEVICE)


def test_an_unknown_device_is_refused_before_reading_the_sources(adapters, tmp_path):
    with pytest.raises(InvalidMerge, match="device must be"):
        analyze([SourceSpec(tmp_path / "not-read", 1.0)], device="tpu")


def test_labels_name_the_sources_and_must_match_them_in_number(adapters):
    result = _analyze(adapters, GPT2_MIX, labels=["alice/a@1.0", "bob/b@2.0"])
    assert [s["label"] for s in result["sources"]] == ["alice/a@1.0", "bob/b@2.0"]
    with pytest.raises(InvalidMerge, match="2 labels for 1 sources"):
        analyze([SourceSpec(adapters["gpt2_a"], 1.0)], labels=["a", "b"])
    assert math.isfinite(result["summary"]["merged_norm"])
