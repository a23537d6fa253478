"""Helpers for the merge integration tests: tiny base models, adapter saving, PEFT deltas."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=128)
GPT2 = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0,
            eos_token_id=0)
LLAMA_BASE = "tiny-llama-64"
GPT2_BASE = "tiny-gpt2-32"


def merge_device() -> str:
    """The device the merge tests run on: LORASTACK_TEST_DEVICE (cpu by default)."""
    return os.environ.get("LORASTACK_TEST_DEVICE", "cpu")


def llama(seed: int = 0):
    """A tiny LLaMA built from its config with seeded random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**LLAMA)).eval()


def gpt2(seed: int = 0):
    """A tiny GPT-2 (Conv1D layers) built from its config."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**GPT2)).eval()


def llama_wide(seed: int = 0):
    """A LLaMA of another width, for sources whose shapes disagree."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**LLAMA, "hidden_size": 32})).eval()


def llama_vocab(seed: int = 0):
    """A LLaMA with a 60k vocabulary: a vocab x vocab float32 matrix would need 14 GB."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**LLAMA, "vocab_size": 60000, "num_hidden_layers": 1})).eval()


BASES = {"llama": llama, "gpt2": gpt2, "llama_wide": llama_wide, "llama_vocab": llama_vocab}


def save_adapter(directory: Path, family: str, *, seed: int, base_name: str | None = None,
                 dtype=None, readme: str | None = None, **config_kwargs) -> Path:
    """Let PEFT build and save a LoRA (random, non-zero B) on a tiny base model."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = BASES[family](0)
    config = LoraConfig(init_lora_weights=False, **config_kwargs)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
        peft_model.peft_config["default"].base_model_name_or_path = base_name or (
            LLAMA_BASE if family.startswith("llama") else GPT2_BASE)
        if dtype is not None:
            peft_model = peft_model.to(dtype)
        peft_model.save_pretrained(str(directory))
    if readme is not None:
        (directory / "README.md").write_text(readme)
    elif (directory / "README.md").exists():
        (directory / "README.md").unlink()
    return directory


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
