"""Recognising LoRA files from other tools (kohya-ss, diffusers), to say what they are."""
from __future__ import annotations

import re
from collections.abc import Iterable

# kohya-ss: lora_unet_<path_with_underscores>.lora_down.weight / .lora_up.weight / .alpha
# (also lora_te*_ for text encoders); diffusers' own: <unet|text_encoder|transformer>.<path>
# .lora.down.weight, or its PEFT-style keys without PEFT's base_model.model. prefix.
_FOREIGN_KEY = re.compile(
    r"(?:^lora_(?:unet|te\d?|transformer)_\S*\.(?:lora_down\.weight|lora_up\.weight|alpha)$)"
    r"|(?:\.lora_(?:down|up)\.weight$)"
    r"|(?:\.lora\.(?:down|up)\.weight$)"
    r"|(?:^(?:unet|text_encoder(?:_2)?|transformer)\.\S*\.lora_[AB]\.weight$)")

FOREIGN_HINT = (
    "These weights look like a kohya-ss / diffusers (Stable Diffusion) LoRA, not a PEFT "
    "adapter. Accepted is a PEFT LoRA folder as PeftModel.save_pretrained writes it: "
    "adapter_config.json plus adapter_model.safetensors whose keys are "
    "base_model.model.<module>.lora_A.weight / lora_B.weight; convert the LoRA to that first")


def looks_foreign(keys: Iterable[str]) -> bool:
    """Whether tensor names look like a kohya-ss or diffusers LoRA rather than PEFT's."""
    return any(_FOREIGN_KEY.search(key) for key in keys)


def foreign_hint(keys: Iterable[str]) -> str | None:
    """A sentence saying these weights look like a kohya/diffusers LoRA, or None."""
    return FOREIGN_HINT if looks_foreign(keys) else None
