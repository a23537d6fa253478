"""Real PEFT adapters, saved by PEFT itself from tiny model configs (no downloads)."""
from __future__ import annotations

import warnings
from pathlib import Path

from tests.support.tiny_models import tiny_llama

BASE_MODEL = "tiny-llama-64"


def save_peft_lora(directory: Path, model, *, seed: int, base_name: str, dtype=None,
                   readme: str | None = None, **config_kwargs) -> Path:
    """Let PEFT wrap `model` in a random LoRA (non-zero B, so it changes the model) and save it.

    `readme` replaces the README PEFT writes; without one the folder has no README.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(init_lora_weights=False, **config_kwargs)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
        peft_model.peft_config["default"].base_model_name_or_path = base_name
        if dtype is not None:
            peft_model = peft_model.to(dtype)
        peft_model.save_pretrained(str(directory))
    if readme is not None:
        (directory / "README.md").write_text(readme)
    elif (directory / "README.md").exists():
        (directory / "README.md").unlink()
    return directory


def save_lora(directory: Path, *, seed: int = 0, r: int = 4, alpha: float = 8,
              target_modules=("q_proj", "v_proj"), readme: str | None = None,
              **config_kwargs) -> Path:
    """Save a LoRA adapter of the tiny LLaMA into `directory`."""
    return save_peft_lora(directory, tiny_llama(0), seed=seed, base_name=BASE_MODEL, readme=readme,
                          r=r, lora_alpha=alpha, target_modules=list(target_modules),
                          **config_kwargs)
