"""Review checks: end-to-end logits through PEFT, scaling from raw factors, refusals, report.

The expected updates are computed here from the raw safetensors factors and PEFT's own
pattern matcher (`peft.utils.other.get_pattern_key`), not from hub.merge, so a shared
scaling bug cannot hide; the dense methods are checked against `peft.utils.merge_utils`.
"""
from __future__ import annotations

import hashlib
import math
import warnings

import pytest
import torch
from click.testing import CliRunner
from merge_fixtures import BASES, merge_device, peft_deltas, read_json, save_adapter
from peft.utils import merge_utils
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file

from hub.cli.merge_local import merge_local
from hub.merge.dense import source_seed

DEVICE = merge_device()
IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    """Adapters mixing rsLoRA with rank/alpha patterns, embeddings and Conv1D."""
    root = tmp_path_factory.mktemp("review")
    return {
        "llama_rs": save_adapter(root / "llama_rs", "llama", seed=11, r=4, lora_alpha=6, use_rslora=True,
                                 target_modules=["q_proj", "v_proj", "gate_proj", "embed_tokens"],
                                 rank_pattern={"layers.1.self_attn.q_proj": 8, "embed_tokens": 2},
                                 alpha_pattern={"v_proj": 5, "layers.0.mlp.gate_proj": 20},
                                 readme="---\nlicense: mit\n---\n"),
        "llama_p": save_adapter(root / "llama_p", "llama", seed=12, r=2, lora_alpha=8,
                                target_modules=["q_proj", "up_proj", "embed_tokens"],
                                alpha_pattern={"embed_tokens": 3}, dtype=torch.bfloat16),
        "gpt2_rs": save_adapter(root / "gpt2_rs", "gpt2", seed=13, r=4, lora_alpha=4, use_rslora=True,
                                fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "wte"],
                                rank_pattern={"h.1.attn.c_attn": 6, "wte": 3},
                                alpha_pattern={"mlp.c_proj": 9}),
        "gpt2_p": save_adapter(root / "gpt2_p", "gpt2", seed=14, r=2, lora_alpha=5, fan_in_fan_out=True,
                               target_modules=["c_attn", "c_fc"]),
    }


def expected_updates(folder) -> dict[str, torch.Tensor]:
    """s * B @ A per module in the base weight's layout, from the raw factors and config."""
    config = read_json(folder / "adapter_config.json")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    rp, ap = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    out = {}
    for key in tensors:
        for a_suffix, b_suffix, emb in ((".lora_A.weight", ".lora_B.weight", False),
                                        (".lora_embedding_A", ".lora_embedding_B", True)):
            if key.endswith(a_suffix):
                name = key[len("base_model.model."):-len(a_suffix)]
                a, b = tensors[key].double(), tensors[key[:-len(a_suffix)] + b_suffix].double()
                r = rp.get(get_pattern_key(rp.keys(), name), config["r"])
                assert a.shape[0] == r, name  # PEFT's key matching gave this rank
                alpha = ap.get(get_pattern_key(ap.keys(), name), config["lora_alpha"])
                scale = alpha / math.sqrt(r) if config["use_rslora"] else alpha / r
                dw = scale * (b @ a)  # (out x in)
                out[name] = dw.T if emb or config["fan_in_fan_out"] else dw
    return out


def _patched(family, updates: dict[str, torch.Tensor]):
    model = BASES[family](0)
    out_emb = model.get_output_embeddings()  # untie GPT-2's lm_head: a LoRA on wte leaves it alone
    out_emb.weight = torch.nn.Parameter(out_emb.weight.detach().clone())
    with torch.no_grad():
        for name, dw in updates.items():
            weight = model.get_parameter(name if name.endswith(".weight") else f"{name}.weight")
            assert weight.shape == dw.shape, name
            weight.add_(dw.to(weight.dtype))
    return model


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _peft_logits(family, folder):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _logits(PeftModel.from_pretrained(BASES[family](0), str(folder)).eval())


def _cli(*args) -> None:
    result = CliRunner().invoke(merge_local, [*map(str, args), "--device", DEVICE])
    assert result.exit_code == 0, result.output


MIXES = {"llama": [("llama_rs", 0.8), ("llama_p", -1.5)], "gpt2": [("gpt2_rs", 1.2), ("gpt2_p", -0.7)]}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_raw_factor_scaling_with_rslora_and_patterns_agrees_with_peft_get_delta_weight(review, family):
    for name, _ in MIXES[family]:
        ours, peft = expected_updates(review[name]), peft_deltas(family, review[name])
        assert set(ours) == set(peft)
        for module in ours:
            torch.testing.assert_close(ours[module].float(), peft[module], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_linear_lora_and_delta_outputs_give_the_logits_of_base_plus_expected_updates(review, family, tmp_path):
    mix = MIXES[family]
    expected: dict[str, torch.Tensor] = {}
    for name, w in mix:
        for module, dw in expected_updates(review[name]).items():
            expected[module] = expected.get(module, 0) + w * dw
    reference = _logits(_patched(family, {k: v.float() for k, v in expected.items()}))
    assert not torch.allclose(reference, _logits(BASES[family](0)), atol=1e-3)
    sources = [f"{review[n]}:{w}" for n, w in mix]
    _cli(*sources, "-o", tmp_path / "lora")
    config = read_json(tmp_path / "lora" / "adapter_config.json")
    assert config["lora_alpha"] == config["r"] and config["rank_pattern"] == config["alpha_pattern"]
    torch.testing.assert_close(_peft_logits(family, tmp_path / "lora"), reference, rtol=1e-4, atol=1e-4)
    _cli(*sources, "--output", "delta", "-o", tmp_path / "delta")
    delta = load_file(str(tmp_path / "delta" / "delta.safetensors"))
    assert set(delta) == {f"{m}.weight" for m in expected}
    torch.testing.assert_close(_logits(_patched(family, delta)), reference, rtol=1e-4, atol=1e-4)


def _reference(method, dws, weights, density, sign, seed, module):
    w = torch.tensor(weights, dtype=dws[0].dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "ties":
            return merge_utils.ties(dws, w, density, sign)
        if method == "magnitude_prune":
            return merge_utils.magnitude_prune(dws, w, density)
        pruned = []
        for i, t in enumerate(dws):  # DARE masks drawn with the engine's documented per-source seeds
            torch.manual_seed(source_seed(seed, module, i))
            pruned.append(merge_utils.prune(t, density, "random", rescale=True))
        return (merge_utils.task_arithmetic(pruned, w) if method == "dare_linear"
                else merge_utils.ties(pruned, w, 1.0, sign))


@pytest.mark.parametrize("method,sign", [("ties", "total"), ("ties", "frequency"), ("magnitude_prune", "total"),
                                         ("dare_ties", "frequency"), ("dare_linear", "total")])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dense_methods_through_the_cli_match_merge_utils_and_reload_in_peft(review, family, method, sign, tmp_path):
    if method.startswith("dare") and DEVICE != "cpu":
        pytest.skip("the reference draws DARE masks from torch's CPU generator")
    mix = MIXES[family]
    per_source = [(expected_updates(review[n]), w) for n, w in mix]
    expected = {}
    for module in set().union(*(u for u, _ in per_source)):
        parts = [(u[module].float(), w) for u, w in per_source if module in u]
        flip = module.endswith(("wte", "embed_tokens")) or family == "gpt2"
        dws = [(d.T if flip else d).contiguous() for d, _ in parts]  # the engine's (out x in) layout
        ref = _reference(method, dws, [w for _, w in parts], 0.4, sign, 3, module)
        expected[module] = ref.T if flip else ref
    args = [f"{review[n]}:{w}" for n, w in mix] + ["--method", method, "--density", "0.4",
                                                    "--majority-sign-method", sign, "--seed", "3"]
    _cli(*args, "--output", "delta", "-o", tmp_path / "delta")
    delta = load_file(str(tmp_path / "delta" / "delta.safetensors"))
    for module, ref in expected.items():
        torch.testing.assert_close(delta[f"{module}.weight"], ref, rtol=1e-5, atol=1e-6)
    # --rank at the full dimension keeps every direction: the LoRA reloads to the same forward.
    _cli(*args, "--rank", "200", "--dtype", "float32", "-o", tmp_path / "lora")
    reference = _logits(_patched(family, expected))
    torch.testing.assert_close(_peft_logits(family, tmp_path / "lora"), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,sign", [("dare_linear", "total"), ("dare_ties", "total"), ("dare_ties", "frequency")])
def test_dare_equals_peft_dare_functions_called_directly_with_negative_weights(monkeypatch, method, sign):
    from hub.merge.dense import combine

    g = torch.Generator().manual_seed(0)
    dws = [torch.randn(12, 9, generator=g) for _ in range(3)]
    weights = [0.7, -1.3, 0.4]
    ours = combine(method, lambda i, lo, hi: dws[i][lo:hi].clone(), (12, 9), weights, 0.4, sign, 5, "m")
    seeds, bernoulli = iter([source_seed(5, "m", i) for i in range(3)]), torch.bernoulli

    def seeded(p, *args, **kwargs):  # PEFT draws one mask per task tensor, in order, from the global RNG
        torch.manual_seed(next(seeds))
        return bernoulli(p, *args, **kwargs)

    monkeypatch.setattr(torch, "bernoulli", seeded)
    w = torch.tensor(weights)
    expected = (merge_utils.dare_linear(dws, w, 0.4) if method == "dare_linear"
                else merge_utils.dare_ties(dws, w, 0.4, sign))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


def test_report_ranks_energy_sha256_and_licences_match_an_independent_svd(review, tmp_path):
    mix = MIXES["llama"]
    _cli(*[f"{review[n]}:{w}" for n, w in mix], "--method", "ties", "--density", "0.5", "--rank", "3",
         "-o", tmp_path / "m")
    report = read_json(tmp_path / "m" / "merge_report.json")
    for entry, (name, w) in zip(report["sources"], mix):
        assert entry["sha256"] == hashlib.sha256((review[name] / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert entry["weight"] == w
    assert [s["license"] for s in report["sources"]] == ["mit", None] and report["licenses"] == ["mit"]
    updates = [(expected_updates(review[n]), w) for n, w in mix]
    assert len(report["modules"]) == len(set().union(*(u for u, _ in updates)))
    for entry in report["modules"]:
        parts = [(u[entry["module"]].float(), w) for u, w in updates if entry["module"] in u]
        merged = merge_utils.ties([d for d, _ in parts], torch.tensor([w for _, w in parts]), 0.5, "total")
        S = torch.linalg.svdvals(merged.double())
        assert entry["rank"] == 3
        assert entry["rank_in"] == sum(int(torch.linalg.matrix_rank(d)) for d, _ in parts)
        assert entry["energy_kept"] == pytest.approx(float((S[:3] ** 2).sum() / (S ** 2).sum()), rel=1e-4)


def _refuse(args, out) -> str:
    result = CliRunner().invoke(merge_local, [*map(str, args), "--device", DEVICE, "-o", str(out)])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    return result.output


def test_a_failing_merge_into_an_existing_empty_folder_leaves_it_empty_and_no_partial_sibling(
        review, bad_adapters, tmp_path):
    out = tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    assert "non-finite" in _refuse([review["llama_p"], bad_adapters["nan"]], out)
    assert list(out.iterdir()) == [] and [p.name for p in out.parent.iterdir()] == ["out"]


@pytest.mark.parametrize("bad", ["dora", "truncated", "missing"])
def test_a_refused_source_never_touches_an_existing_folder_with_content(review, bad_adapters, bad, tmp_path):
    out = tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    _refuse([review["llama_p"], bad_adapters[bad]], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in out.parent.iterdir()] == ["out"]


@pytest.fixture(scope="module")
def gpt2_with_head(tmp_path_factory):
    """A GPT-2 LoRA on Conv1D layers and lm_head (nn.Linear): PEFT saves fan_in_fan_out=False."""
    folder = save_adapter(tmp_path_factory.mktemp("head") / "a", "gpt2", seed=15, r=2, lora_alpha=4,
                          target_modules=["c_attn", "c_proj", "lm_head"])
    assert read_json(folder / "adapter_config.json")["fan_in_fan_out"] is False  # PEFT's last layer wins
    return folder


def test_delta_of_a_gpt2_adapter_saved_with_fan_in_fan_out_false_is_never_silently_transposed(
        gpt2_with_head, tmp_path):
    # PEFT picks the layout per layer (Conv1D -> in x out); its saved flag is only the last layer's.
    # Either each tensor is in its base weight's layout, or the merge refuses in one line, writing nothing.
    out = tmp_path / "delta"
    result = CliRunner().invoke(merge_local, [str(gpt2_with_head), "--output", "delta", "--device", DEVICE,
                                              "-o", str(out)])
    if result.exit_code != 0:
        assert len(result.output.strip().splitlines()) == 1 and "conv1d" in result.output.lower()
        assert not out.exists()
        return
    delta = load_file(str(out / "delta.safetensors"))
    for module, dw in peft_deltas("gpt2", gpt2_with_head).items():  # attn.c_proj is square: silent if wrong
        torch.testing.assert_close(delta[f"{module}.weight"], dw, rtol=1e-5, atol=1e-6)


def test_gpt2_adapters_whose_saved_fan_in_fan_out_differs_still_merge_and_reload(review, gpt2_with_head, tmp_path):
    _cli(gpt2_with_head, f"{review['gpt2_p']}:0.5", "-o", tmp_path / "m")
    expected = peft_deltas("gpt2", gpt2_with_head)
    for module, dw in peft_deltas("gpt2", review["gpt2_p"]).items():
        expected[module] = expected.get(module, 0) + 0.5 * dw
    got = peft_deltas("gpt2", tmp_path / "m")
    assert set(got) == set(expected)
    for module in expected:
        torch.testing.assert_close(got[module], expected[module], rtol=1e-4, atol=1e-5)
