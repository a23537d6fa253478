"""Helpers for the formats tests: tiny PEFT adapters and byte-level safetensors edits.

A uniquely named module rather than conftest.py: several conftest modules exist in
the tree and `from conftest import ...` would pick whichever was imported last.
"""
from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Callable

from tests.support.tiny_models import tiny_gpt2, tiny_llama


def llama():
    """A randomly initialised tiny Llama (no download)."""
    return tiny_llama()


def gpt2():
    """A randomly initialised tiny GPT-2 (Conv1D layers, fan_in_fan_out)."""
    return tiny_gpt2(n_embd=64, n_head=4, vocab_size=128)


def conv():
    """A tiny Conv2d model for conv LoRA."""
    import torch.nn as nn

    class TinyConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(8, 4)

        def forward(self, x):  # pragma: no cover - never run, only adapted
            return self.head(self.conv(x).mean((2, 3)))

    return TinyConv()


def save_adapter(root: Path, name: str, make_model: Callable, peft_config,
                 base_model: str | None = None) -> Path:
    """Save a PEFT adapter of make_model() under root/name."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # PEFT/transformers chatter about tiny offline models
    base = make_model()
    if base_model:  # PEFT records the base model's name_or_path in the config
        base.name_or_path = base_model
    model = get_peft_model(base, peft_config)
    # PEFT initialises lora_B to zero; give B values so merges and checks see real data.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname or "lora_embedding_B" in pname:
                p.normal_(0, 0.02)
    out = root / name
    model.save_pretrained(out)
    return out


def build_adapters(root: Path) -> dict[str, Path]:
    """Every adapter kind the tests use, saved under root."""
    from peft import IA3Config, LoraConfig

    return {
        "lora": save_adapter(root, "lora", llama, LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), base_model="tiny/llama"),
        "rank_pattern": save_adapter(root, "rank_pattern", llama, LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
            rank_pattern={"model.layers.0.self_attn.q_proj": 2, "down_proj": 6},
            alpha_pattern={"down_proj": 18})),
        "dora": save_adapter(root, "dora", llama, LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)),
        "ia3": save_adapter(root, "ia3", llama, IA3Config(
            target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])),
        "gpt2": save_adapter(root, "gpt2", gpt2, LoraConfig(
            r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True)),
        "embedding": save_adapter(root, "embedding", llama, LoraConfig(
            r=4, lora_alpha=4, target_modules=["embed_tokens", "q_proj"])),
        "modules_to_save": save_adapter(root, "modules_to_save", llama, LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])),
        "lora_bias": save_adapter(root, "lora_bias", llama, LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj"], lora_bias=True)),
        "conv": save_adapter(root, "conv", conv, LoraConfig(r=2, lora_alpha=2, target_modules=["conv"])),
    }


def files_of(folder: Path) -> dict[str, Path]:
    """The upload mapping (file name -> path) for a folder."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def read_raw(path: Path) -> tuple[dict, bytes]:
    """The header JSON and the data section of a safetensors file, unvalidated."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_raw(path: Path, header: dict | bytes, data: bytes, *,
              length: int | None = None) -> None:
    """Write a safetensors file byte by byte: length prefix, header, data."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(head) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + head + data)
