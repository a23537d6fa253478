"""What can be merged: the one list of refusals the registry's flag and the engine share.

The engine combines plain LoRA updates `s * B @ A`. Anything whose forward a plain LoRA
cannot reproduce (DoRA, biases, fully trained modules, other PEFT types, conv kernels)
or whose factors it cannot read as floats is refused by name: the registry records such
an adapter as not mergeable, the engine refuses it with the same words.
"""
from __future__ import annotations

from dataclasses import dataclass

from hub.errors import (
    HubError,
    InvalidAdapterConfig,
    InvalidSafetensors,
    TensorMismatch,
    UnsupportedFormat,
)
from hub.formats.layout import LoraLayout

#: safetensors dtype -> torch dtype name, for the factor dtypes the engine reads.
MERGE_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}

# Config switches that change the forward beyond s * B @ A: refused when set (truthy).
REFUSED_SWITCHES = {
    "use_dora": "DoRA (use_dora), whose magnitude vectors a plain LoRA cannot carry",
    "lora_bias": "lora_bias, whose bias on lora_B a plain LoRA cannot carry",
    "use_qalora": "QALoRA (use_qalora), whose A sees pooled inputs",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens), active only after its tokens",
    "target_parameters": "target_parameters (LoRA on raw parameters)",
    "layer_replication": "layer_replication, whose copied layers share the base weights",
    "trainable_token_indices": "trainable_token_indices (trained token rows)",
    "modules_to_save": "modules_to_save (fully trained modules)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "kasa_config": "KaSA (kasa_config)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
}


@dataclass(frozen=True)
class Refusal:
    """Why an adapter cannot be merged, and the error the engine raises for it."""

    reason: str
    error: type[HubError] = InvalidAdapterConfig

    def __str__(self) -> str:
        return self.reason


def config_refusal(config: dict) -> Refusal | None:
    """The refusal the config alone decides (peft_type, variant switches, biases), or None."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        return Refusal(f"peft_type is {peft_type!r}, and only LoRA adapters (LORA) can be merged")
    for switch, what in REFUSED_SWITCHES.items():
        if config.get(switch):
            return Refusal(f"uses {what}")
    if config.get("bias", "none") not in ("none", None):
        return Refusal(f"trains biases (bias={config.get('bias')!r}), which a LoRA merge cannot carry")
    return None


def layout_refusal(layout: LoraLayout) -> Refusal | None:
    """The refusal the tensors decide (variant tensors, conv kernels, dtypes), or None."""
    for module, params in layout.modules.items():
        for param, what in (("lora_magnitude_vector", "DoRA magnitude vectors"),
                            ("lora_B.bias", "a lora_B bias")):
            if param in params:
                return Refusal(f"holds {what} ({module}.{param})")
    if layout.extras:
        return Refusal(f"holds tensors a LoRA merge cannot carry ({layout.extras[0]})")
    for module in layout.lora_modules():
        if len(module.a.shape) != 2:
            return Refusal(f"module {module.name} has {len(module.a.shape)}-d factors (Conv LoRA); "
                           "only Linear, Conv1D and Embedding LoRA can be merged", UnsupportedFormat)
        for key, entry in ((module.key_a, module.a), (module.key_b, module.b)):
            if entry.dtype not in MERGE_DTYPES:
                return Refusal(f"tensor {key} has dtype {entry.dtype}, not a float the merge reads "
                               f"({', '.join(MERGE_DTYPES)})", InvalidSafetensors)
        if module.a.dtype != module.b.dtype:
            return Refusal(f"module {module.name} stores A as {module.a.dtype} and B as "
                           f"{module.b.dtype}; the merge needs one dtype per module", InvalidSafetensors)
        if 0 in module.a.shape or 0 in module.b.shape:
            return Refusal(f"module {module.name} has a zero-size factor (A {list(module.a.shape)}, "
                           f"B {list(module.b.shape)})", TensorMismatch)
    return None


def merge_refusal(config: dict, layout: LoraLayout | None) -> Refusal | None:
    """Why the merge engine refuses this adapter (naming the feature), or None if it merges."""
    refusal = config_refusal(config)
    if refusal is None and layout is not None:
        refusal = layout_refusal(layout)
    return refusal
