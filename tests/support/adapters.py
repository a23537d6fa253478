"""Real PEFT adapters, saved by PEFT itself from tiny model configs (no downloads)."""
from __future__ import annotations

from pathlib import Path

from tests.support.tiny_models import tiny_llama

BASE_MODEL = "tiny-llama-64"


def save_lora(directory: Path, *, seed: int = 0, r: int = 4, alpha: float = 8,
              target_modules=("q_proj", "v_proj"), readme: str | None = None,
              **config_kwargs) -> Path:
    """Save a LoRA adapter (non-zero B, so it changes the model) into `directory`."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(0)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                        init_lora_weights=False, **config_kwargs)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = BASE_MODEL
    peft_model.save_pretrained(str(directory))
    if readme is not None:
        (directory / "README.md").write_text(readme)
    elif (directory / "README.md").exists():
        (directory / "README.md").unlink()
    return directory
