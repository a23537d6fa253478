"""Real adapters saved by PEFT from tiny LLaMA and GPT-2 configs, and PEFT's own deltas.

Everything is session-scoped: PEFT builds each adapter once; tests only read the folders.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from merge_fixtures import llama, peft_deltas, save_adapter


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """Named adapter folders covering ranks, rsLoRA, patterns, embeddings, Conv1D, dtypes."""
    import torch

    root = tmp_path_factory.mktemp("adapters")
    specs = {
        "llama_a": dict(family="llama", seed=1, r=4, lora_alpha=8,
                        target_modules=["q_proj", "v_proj", "embed_tokens"],
                        readme="---\nlicense: apache-2.0\n---\n# A\n"),
        "llama_b": dict(family="llama", seed=2, r=8, lora_alpha=16, use_rslora=True,
                        target_modules=["q_proj", "k_proj", "o_proj", "down_proj"],
                        readme="---\nlicense:\n  - mit\n---\n"),
        "llama_c": dict(family="llama", seed=3, r=4, lora_alpha=4,
                        target_modules=["q_proj", "v_proj", "embed_tokens"],
                        rank_pattern={"q_proj": 2, "layers.1.self_attn.v_proj": 6},
                        alpha_pattern={"v_proj": 3, "embed_tokens": 12}, dtype=torch.bfloat16),
        "llama_half": dict(family="llama", seed=4, r=2, lora_alpha=2,
                           target_modules=["q_proj", "v_proj"], dtype=torch.float16),
        "gpt2_a": dict(family="gpt2", seed=5, r=4, lora_alpha=8, fan_in_fan_out=True,
                       target_modules=["c_attn", "c_proj", "wte"]),
        "gpt2_b": dict(family="gpt2", seed=6, r=2, lora_alpha=4, fan_in_fan_out=True,
                       use_rslora=True, target_modules=["c_attn", "c_fc"]),
    }
    return {name: save_adapter(root / name, **spec) for name, spec in specs.items()}


@pytest.fixture(scope="session")
def deltas(adapters) -> dict[str, dict]:
    """PEFT's per-module deltas for every fixture adapter."""
    return {name: peft_deltas("gpt2" if name.startswith("gpt2") else "llama", path)
            for name, path in adapters.items()}


@pytest.fixture(scope="session")
def bad_adapters(tmp_path_factory, adapters) -> dict[str, Path]:
    """Sources every merge must refuse, each saved by PEFT or damaged from a real one."""
    import json
    import shutil

    import torch
    from peft import LoHaConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("bad")
    base = dict(family="llama", seed=9, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    out = {
        "dora": save_adapter(root / "dora", use_dora=True, **base),
        "lora_bias": save_adapter(root / "lora_bias", lora_bias=True, **base),
        "bias_all": save_adapter(root / "bias_all", bias="all", **base),
        "modules_to_save": save_adapter(root / "modules_to_save", modules_to_save=["lm_head"], **base),
        "other_base": save_adapter(root / "other_base", base_name="some-other-model", **base),
        "wide": save_adapter(root / "wide", **{**base, "family": "llama_wide"}),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loha = get_peft_model(llama(0), LoHaConfig(r=4, target_modules=["q_proj"]))
        loha.save_pretrained(str(root / "loha"))
    out["loha"] = root / "loha"

    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(adapters["llama_a"], target)
        return target

    weights = "adapter_model.safetensors"
    out["truncated"] = copy("truncated")
    size = (out["truncated"] / weights).stat().st_size
    with open(out["truncated"] / weights, "r+b") as fh:
        fh.truncate(size - 64)
    out["not_safetensors"] = copy("not_safetensors")
    (out["not_safetensors"] / weights).write_bytes(b"\x00" * 5)
    out["bad_json"] = copy("bad_json")
    (out["bad_json"] / "adapter_config.json").write_text("{not json")
    out["no_config"] = copy("no_config")
    (out["no_config"] / "adapter_config.json").unlink()
    out["pickle_only"] = copy("pickle_only")
    (out["pickle_only"] / weights).rename(out["pickle_only"] / "adapter_model.bin")
    out["nan"] = copy("nan")
    tensors = load_file(str(out["nan"] / weights))
    key = next(k for k in tensors if k.endswith("q_proj.lora_B.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(out["nan"] / weights))
    out["rank_mismatch"] = copy("rank_mismatch")
    config = json.loads((out["rank_mismatch"] / "adapter_config.json").read_text())
    config["r"] = 5
    (out["rank_mismatch"] / "adapter_config.json").write_text(json.dumps(config))
    out["prefixed"] = copy("prefixed")
    tensors = load_file(str(out["prefixed"] / weights))
    save_file({"weird." + k: v for k, v in tensors.items()}, str(out["prefixed"] / weights))
    kohya = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
             "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    out["kohya"] = root / "kohya"
    out["kohya"].mkdir()
    save_file(kohya, str(out["kohya"] / "my_style.safetensors"))
    out["renamed_weights"] = copy("renamed_weights")
    (out["renamed_weights"] / weights).rename(out["renamed_weights"] / "model.safetensors")
    out["missing"] = root / "does-not-exist"
    return out
