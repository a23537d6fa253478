"""Helpers for the merge integration tests: tiny base models, adapter saving, PEFT deltas."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from tests.support.adapters import save_peft_lora
from tests.support.tiny_models import tiny_gpt2, tiny_llama

LLAMA_BASE = "tiny-llama-64"
GPT2_BASE = "tiny-gpt2-32"


def merge_device() -> str:
    """The device the merge tests run on: LORASTACK_TEST_DEVICE (cpu by default)."""
    return os.environ.get("LORASTACK_TEST_DEVICE", "cpu")


def llama(seed: int = 0):
    """A tiny LLaMA built from its config with seeded random weights."""
    return tiny_llama(seed)


def gpt2(seed: int = 0):
    """A tiny GPT-2 (Conv1D layers) built from its config."""
    return tiny_gpt2(seed)


def llama_wide(seed: int = 0):
    """A LLaMA of another width, for sources whose shapes disagree."""
    return tiny_llama(seed, hidden_size=32)


def llama_vocab(seed: int = 0):
    """A LLaMA with a 60k vocabulary: a vocab x vocab float32 matrix would need 14 GB."""
    return tiny_llama(seed, vocab_size=60000, num_hidden_layers=1)


BASES = {"llama": llama, "gpt2": gpt2, "llama_wide": llama_wide, "llama_vocab": llama_vocab}


def save_adapter(directory: Path, family: str, *, seed: int, base_name: str | None = None,
                 dtype=None, readme: str | None = None, **config_kwargs) -> Path:
    """Let PEFT build and save a LoRA (random, non-zero B) on a tiny base model."""
    return save_peft_lora(directory, BASES[family](0), seed=seed, dtype=dtype, readme=readme,
                          base_name=base_name or (LLAMA_BASE if family.startswith("llama")
                                                  else GPT2_BASE), **config_kwargs)


def peft_deltas(family: str, folder: Path) -> dict:
    """PEFT's own `get_delta_weight` per module (base-weight layout), as the reference."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(BASES[family](0), str(folder))
    out = {}
    prefix = "base_model.model."
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "scaling", {}):
            out[name[len(prefix):]] = module.get_delta_weight("default").detach().float()
    return out


def transposed(name: str, family: str) -> bool:
    """Whether a module's base weight is (in x out): GPT-2 Conv1D and embeddings."""
    return family == "gpt2" or "embed" in name or name.endswith("wte")


def read_json(path: Path) -> dict:
    """Load a JSON file."""
    return json.loads(Path(path).read_text())
