"""Parity with the mathematically correct merge, on adapters PEFT saved and PEFT reloads."""
from __future__ import annotations

import hashlib
import re
import warnings

import pytest
import torch
from merge_fixtures import BASES, merge_device, peft_deltas, read_json, transposed
from peft.utils import merge_utils
from safetensors.torch import load_file

from hub.merge import MergeSpec, SourceSpec, merge, merge_to_folder
from hub.merge.dense import source_seed

DEVICE = merge_device()
LLAMA_MIX = [("llama_a", 0.7), ("llama_b", -0.4), ("llama_c", 1.3)]
GPT2_MIX = [("gpt2_a", 1.0), ("gpt2_b", 0.5)]


def _specs(adapters, mix):
    return [SourceSpec(adapters[name], weight) for name, weight in mix]


def _expected_linear(deltas, mix) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, weight in mix:
        for module, delta in deltas[name].items():
            out[module] = out.get(module, 0) + weight * delta
    return out


def _loaded_deltas(family: str, folder) -> dict[str, torch.Tensor]:
    return peft_deltas(family, folder)


def _assert_close(actual: dict, expected: dict, rtol=1e-4, atol=1e-5):
    assert set(actual) == set(expected)
    for module in expected:
        torch.testing.assert_close(actual[module].float().cpu(), expected[module].float(),
                                   rtol=rtol, atol=atol, msg=lambda m: f"{module}: {m}")


def test_linear_without_rank_is_the_exact_weighted_sum_of_updates(adapters, deltas, tmp_path):
    result = merge(_specs(adapters, LLAMA_MIX), MergeSpec(output="delta", device=DEVICE))
    actual = {k[: -len(".weight")]: v for k, v in result.tensors.items()}
    _assert_close(actual, _expected_linear(deltas, LLAMA_MIX))


def test_linear_lora_output_reloads_in_peft_with_the_exact_sum_and_numerical_rank(adapters, deltas, tmp_path):
    out = tmp_path / "merged"
    report = merge_to_folder(_specs(adapters, LLAMA_MIX), MergeSpec(device=DEVICE), out)
    expected = _expected_linear(deltas, LLAMA_MIX)
    _assert_close(_loaded_deltas("llama", out), expected)
    by_module = {m["module"]: m for m in report["modules"]}
    for module, dense in expected.items():
        assert by_module[module]["rank"] == torch.linalg.matrix_rank(dense).item()
        assert by_module[module]["rank"] <= by_module[module]["rank_in"]
        assert by_module[module]["energy_kept"] == pytest.approx(1.0)
    config = read_json(out / "adapter_config.json")
    assert config["lora_alpha"] == config["r"] and config["use_rslora"] is False
    assert config["rank_pattern"] and config["rank_pattern"] == config["alpha_pattern"]
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj",
                                             "embed_tokens"}
    assert config["base_model_name_or_path"] == "tiny-llama-64"


def test_linear_rank_r_equals_svd_truncation_of_the_dense_sum(adapters, deltas, tmp_path):
    out = tmp_path / "merged"
    report = merge_to_folder(_specs(adapters, LLAMA_MIX), MergeSpec(method="linear", rank=3,
                                                                     device=DEVICE), out)
    expected = {}
    for module, dense in _expected_linear(deltas, LLAMA_MIX).items():
        U, S, Vh = torch.linalg.svd(dense.double(), full_matrices=False)
        r = min(3, int(torch.linalg.matrix_rank(dense)))
        expected[module] = (U[:, :r] * S[:r]) @ Vh[:r]
        entry = next(m for m in report["modules"] if m["module"] == module)
        assert entry["energy_kept"] == pytest.approx(float((S[:r] ** 2).sum() / (S ** 2).sum()), rel=1e-4)
    _assert_close(_loaded_deltas("llama", out), expected, rtol=1e-3, atol=1e-4)


def _reference_dense(method, dws, weights, density, sign, seed, module):
    """merge_utils applied to the dW_i (DARE drawn with our per-source seeds)."""
    w = torch.tensor(weights)
    if method in ("dare_linear", "dare_ties"):
        pruned = []
        for i, t in enumerate(dws):
            torch.manual_seed(source_seed(seed, module, i))
            pruned.append(merge_utils.prune(t, density, "random", rescale=True))
        if method == "dare_linear":
            return merge_utils.task_arithmetic(pruned, w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return merge_utils.ties(pruned, w, 1.0, sign)
    if method == "ties":
        return merge_utils.ties(dws, w, density, sign)
    return merge_utils.magnitude_prune(dws, w, density)


@pytest.mark.parametrize("method,sign", [("ties", "total"), ("ties", "frequency"),
                                         ("dare_linear", "total"), ("dare_ties", "frequency"),
                                         ("magnitude_prune", "total")])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dense_methods_match_merge_utils_applied_to_the_updates(adapters, deltas, method, sign, family):
    if method.startswith("dare") and DEVICE != "cpu":
        pytest.skip("the reference draws DARE masks from torch's CPU generator")
    mix = LLAMA_MIX if family == "llama" else GPT2_MIX
    spec = MergeSpec(method=method, density=0.3, majority_sign_method=sign, seed=7, output="delta",
                     device=DEVICE)
    result = merge(_specs(adapters, mix), spec)
    modules = set().union(*(deltas[name] for name, _ in mix))
    for module in modules:
        parts = [(deltas[name][module], w) for name, w in mix if module in deltas[name]]
        flip = transposed(module, family)
        # Our methods work in B @ A layout (out x in); PEFT's deltas are in base layout.
        dws = [(d.T if flip else d).contiguous() for d, _ in parts]
        ref = _reference_dense(method, dws, [w for _, w in parts], 0.3, sign, 7, module)
        actual = result.tensors[f"{module}.weight"].float().cpu()
        torch.testing.assert_close(actual, ref.T if flip else ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alias,method", [("svd", "linear"), ("cat", "linear"), ("ties_svd", "ties"),
                                          ("dare_linear_svd", "dare_linear"),
                                          ("dare_ties_svd", "dare_ties"),
                                          ("magnitude_prune_svd", "magnitude_prune")])
def test_peft_aliases_mean_the_product_space_method(adapters, alias, method):
    density = None if method == "linear" else 0.5
    mix = _specs(adapters, LLAMA_MIX[:2])
    ours = merge(mix, MergeSpec(method=alias, density=density, rank=2, device=DEVICE))
    canonical = merge(mix, MergeSpec(method=method, density=density, rank=2, device=DEVICE))
    assert ours.report["canonical_method"] == method and ours.report["method"] == alias
    for key, tensor in canonical.tensors.items():
        assert torch.equal(ours.tensors[key], tensor), key


def test_dare_is_reproducible_from_the_seed_and_changes_with_it(adapters, tmp_path):
    spec = dict(method="dare_ties", density=0.5, rank=4, device=DEVICE)
    mix = _specs(adapters, LLAMA_MIX[:2])
    for name, seed in (("one", 3), ("two", 3), ("three", 4)):
        merge_to_folder(mix, MergeSpec(seed=seed, **spec), tmp_path / name)
    files = [(tmp_path / n / "adapter_model.safetensors").read_bytes() for n in ("one", "two", "three")]
    assert files[0] == files[1]
    assert files[0] != files[2]


def _forward(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family,mix", [("llama", LLAMA_MIX), ("gpt2", GPT2_MIX)])
def test_peft_loads_the_merged_adapter_and_its_forward_matches_base_plus_delta(
        adapters, deltas, tmp_path, family, mix):
    from peft import PeftModel

    lora_out, delta_out = tmp_path / "lora", tmp_path / "delta"
    merge_to_folder(_specs(adapters, mix), MergeSpec(device=DEVICE), lora_out)
    merge_to_folder(_specs(adapters, mix), MergeSpec(output="delta", device=DEVICE), delta_out)
    delta = load_file(str(delta_out / "delta.safetensors"))
    base = BASES[family](0)
    patched = BASES[family](0)
    # A LoRA on the input embedding leaves a tied output embedding (GPT-2's lm_head) alone.
    output_embedding = patched.get_output_embeddings()
    output_embedding.weight = torch.nn.Parameter(output_embedding.weight.detach().clone())
    with torch.no_grad():
        for key, value in delta.items():
            weight = patched.get_parameter(key)
            assert weight.shape == value.shape, key  # the base weight's own layout
            weight.add_(value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(BASES[family](0), str(lora_out)).eval()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_forward(merged, ids), _forward(patched, ids), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_forward(base, ids), _forward(patched, ids), atol=1e-3)


def test_report_names_sources_with_sha256_licences_and_per_module_energy(adapters, tmp_path):
    out = tmp_path / "merged"
    merge_to_folder(_specs(adapters, LLAMA_MIX), MergeSpec(rank=2, device=DEVICE), out)
    report = read_json(out / "merge_report.json")
    for entry, (name, weight) in zip(report["sources"], LLAMA_MIX):
        data = (adapters[name] / "adapter_model.safetensors").read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["weight"] == weight
    assert report["licenses"] == ["apache-2.0", "mit"]
    assert report["method"] == "linear" and report["params"]["rank"] == 2
    assert all(0.0 < m["energy_kept"] <= 1.0 for m in report["modules"])
    assert report["device"].startswith(DEVICE)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "merge_report.json"]


def test_mixed_fp16_bf16_sources_compute_in_float32_and_dtype_sets_only_the_output(adapters, deltas):
    mix = [("llama_half", 1.0), ("llama_c", -1.0)]
    default = merge(_specs(adapters, mix), MergeSpec(output="delta", device=DEVICE))
    assert {t.dtype for t in default.tensors.values()} == {torch.float32}
    half = merge(_specs(adapters, mix), MergeSpec(dtype="float16", device=DEVICE))
    assert {t.dtype for t in half.tensors.values()} == {torch.float16}
    actual = {k[: -len(".weight")]: v for k, v in default.tensors.items()}
    _assert_close(actual, _expected_linear(deltas, mix), rtol=1e-3, atol=1e-4)


def test_progress_callback_rises_to_one(adapters, tmp_path):
    seen: list[float] = []
    merge_to_folder(_specs(adapters, LLAMA_MIX[:1]), MergeSpec(device=DEVICE), tmp_path / "m",
                    progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 2


def test_task_negation_of_an_adapter_with_itself_cancels_to_zero(adapters, tmp_path):
    mix = [SourceSpec(adapters["llama_a"], 1.0), SourceSpec(adapters["llama_a"], -1.0)]
    report = merge_to_folder(mix, MergeSpec(device=DEVICE), tmp_path / "zero")
    assert {m["rank"] for m in report["modules"]} == {0}
    tensors = load_file(str(tmp_path / "zero" / "adapter_model.safetensors"))
    assert all(float(t.abs().max()) == 0.0 for t in tensors.values())


def test_shape_batched_linear_path_equals_module_by_module(adapters, monkeypatch):
    from hub.merge import engine

    mix = _specs(adapters, LLAMA_MIX)
    alone = merge(mix, MergeSpec(rank=3, device=DEVICE))
    monkeypatch.setitem(engine.BATCH_BYTES, "cpu", 1 << 30)
    monkeypatch.setitem(engine.BATCH_BYTES, "cuda", 1 << 30)
    batched = merge(mix, MergeSpec(rank=3, device=DEVICE))
    assert alone.ranks == batched.ranks
    for key, tensor in alone.tensors.items():
        torch.testing.assert_close(batched.tensors[key], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cpu", reason="the module thread pool is the CPU path")
def test_cpu_module_threads_give_the_same_bytes_as_one_thread(adapters, monkeypatch):
    import threading

    from hub.merge import engine

    seen = set()
    batch = engine._merge_linear_batch

    def spy(*args):
        seen.add((threading.current_thread().name, torch.get_num_threads()))
        return batch(*args)

    monkeypatch.setattr(engine, "_merge_linear_batch", spy)
    mix = _specs(adapters, LLAMA_MIX)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = merge(mix, MergeSpec(rank=3, device="cpu"))
        assert {name for name, _ in seen} == {threading.current_thread().name}
        seen.clear()
        torch.set_num_threads(3)
        threaded = merge(mix, MergeSpec(rank=3, device="cpu"))
        # Workers of the pool, one torch thread each; the caller's count is back for new threads too.
        assert seen and all(name.startswith("lorastack-merge") and n == 1 for name, n in seen)
        fresh = []
        worker = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 3 and fresh == [3]
    finally:
        torch.set_num_threads(threads)
    assert threaded.ranks == serial.ranks
    for key, tensor in serial.tensors.items():
        assert torch.equal(threaded.tensors[key], tensor), key


def test_report_and_config_list_modules_in_plan_order(adapters, tmp_path):
    # The linear path merges shape batches in any order; what it writes must not show it.
    from hub.merge.plan import load_sources, plan_modules

    mix = _specs(adapters, LLAMA_MIX)
    order = [plan.name for plan in plan_modules(load_sources(mix))]
    assert order == sorted(order, key=lambda name: [int(p) if p.isdigit() else p
                                                     for p in re.split(r"(\d+)", name)])
    report = merge_to_folder(mix, MergeSpec(rank=3, device=DEVICE), tmp_path / "m")
    assert [m["module"] for m in report["modules"]] == order
    assert list(merge(mix, MergeSpec(rank=3, device=DEVICE)).ranks) == order


def test_an_error_in_the_progress_callback_stops_the_workers_first(adapters):
    import threading

    calls = []

    def progress(fraction):
        calls.append(fraction)
        if len(calls) == 2:
            raise KeyError("stop")

    with pytest.raises(KeyError, match="stop"):
        merge(_specs(adapters, LLAMA_MIX), MergeSpec(rank=3, device=DEVICE), progress=progress)
    assert not [t for t in threading.enumerate() if t.name.startswith("lorastack-merge")]


def test_delta_output_with_a_rank_is_the_low_rank_product(adapters):
    mix = _specs(adapters, GPT2_MIX)
    low = merge(mix, MergeSpec(rank=2, device=DEVICE))
    delta = merge(mix, MergeSpec(rank=2, output="delta", device=DEVICE))
    for module in low.ranks:
        a_key, b_key = (f"base_model.model.{module}.lora_A.weight", f"base_model.model.{module}.lora_B.weight")
        if a_key not in low.tensors:
            a_key, b_key = (f"base_model.model.{module}.lora_embedding_A",
                            f"base_model.model.{module}.lora_embedding_B")
        product = low.tensors[b_key] @ low.tensors[a_key]
        torch.testing.assert_close(delta.tensors[f"{module}.weight"], product.T, rtol=1e-4, atol=1e-5)


def test_large_vocabulary_embeddings_merge_without_vocab_by_vocab_matrices(tmp_path):
    from merge_fixtures import save_adapter

    a = save_adapter(tmp_path / "a", "llama_vocab", seed=1, r=4, lora_alpha=8,
                     target_modules=["embed_tokens"], base_name="tiny-llama-60k")
    b = save_adapter(tmp_path / "b", "llama_vocab", seed=2, r=8, lora_alpha=8,
                     target_modules=["embed_tokens"], base_name="tiny-llama-60k")
    mix = [SourceSpec(a, 1.0), SourceSpec(b, -0.5)]
    low = merge(mix, MergeSpec(device=DEVICE))
    name = "base_model.model.model.embed_tokens"
    A, B = low.tensors[f"{name}.lora_embedding_A"], low.tensors[f"{name}.lora_embedding_B"]
    assert A.shape == (12, 60000) and B.shape == (64, 12)
    ref_a, ref_b = (load_file(str(p / "adapter_model.safetensors")) for p in (a, b))
    rows = slice(0, 500)  # check a slice of the vocabulary against the exact sum

    def part(ref, scale):
        return scale * (ref[f"{name}.lora_embedding_B"] @ ref[f"{name}.lora_embedding_A"][:, rows])

    expected = part(ref_a, 2.0) - 0.5 * part(ref_b, 1.0)
    torch.testing.assert_close((B @ A[:, rows]), expected, rtol=1e-3, atol=1e-4)


def test_embedding_only_source_merges_with_a_conv1d_source_whatever_its_fan_in_fan_out(
        adapters, deltas, tmp_path):
    from merge_fixtures import save_adapter

    emb = save_adapter(tmp_path / "emb", "gpt2", seed=7, r=2, lora_alpha=2, target_modules=["wte"])
    out = tmp_path / "merged"
    merge_to_folder([SourceSpec(emb, 1.0), SourceSpec(adapters["gpt2_b"], 0.5)], MergeSpec(device=DEVICE), out)
    assert read_json(out / "adapter_config.json")["fan_in_fan_out"] is True
    expected = _expected_linear({"emb": peft_deltas("gpt2", emb), **deltas}, [("emb", 1.0), ("gpt2_b", 0.5)])
    _assert_close(_loaded_deltas("gpt2", out), expected)
