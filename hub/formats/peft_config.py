"""adapter_config.json and its agreement with the tensors, in PEFT's own naming."""
from __future__ import annotations

import json

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from hub.errors import InvalidAdapterConfig, TensorMismatch
from hub.formats.safetensors_file import (
    SafetensorsHeader, TensorEntry, quote, strict_json_loads,
)

MAX_RANK = 65536
MAX_PATTERN_LEN = 512
MAX_PATTERN_KEYS = 4096  # one entry per module of a 70B model is ~600
MAX_TENSOR_NAME_LEN = 1024  # also bounds the work user rank_pattern regexes do
PEFT_PREFIX = "base_model.model."
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")

# <module>.<lora param>; PEFT saves these keys for adapter name "default" with the
# adapter name stripped. lora_magnitude_vector had a ".weight" suffix before PEFT 0.12.
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_B\.bias"
    r"|lora_embedding_A|lora_embedding_B|lora_magnitude_vector(?:\.weight)?)$")
# A quantifier applied to a group that itself contains a quantifier, e.g. "(a+)+":
# the classic catastrophic-backtracking shape; Python's re has no timeout.
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[+*}][^()]*\)\s*[+*{]")


def parse_adapter_config(data: bytes, *, max_bytes: int = 1_000_000) -> dict:
    """Parse adapter_config.json bytes into a dict; check peft_type and LoRA's fields."""
    if len(data) > max_bytes:
        raise InvalidAdapterConfig(
            f"adapter_config.json has {len(data)} bytes; the limit is {max_bytes}")
    try:
        config = strict_json_loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidAdapterConfig(
            f"adapter_config.json is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise InvalidAdapterConfig(f"adapter_config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidAdapterConfig("adapter_config.json must be a JSON object")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or not peft_type:
        raise InvalidAdapterConfig("adapter_config.json needs `peft_type` (a string, e.g. \"LORA\")")
    # Limits are the database column widths (PostgreSQL refuses longer values).
    for key, limit in (("base_model_name_or_path", 256), ("task_type", 64)):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise InvalidAdapterConfig(f"`{key}` must be a string or null")
        if config.get(key) is not None and len(config[key]) > limit:
            raise InvalidAdapterConfig(f"`{key}` must be at most {limit} characters")
    if len(peft_type) > 32:
        raise InvalidAdapterConfig("`peft_type` must be at most 32 characters")
    try:
        json.dumps(config, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAdapterConfig("adapter_config.json holds an unpaired surrogate escape"
                                   " (\\udXXX); it is not valid Unicode") from None
    if peft_type != "LORA" and config.get("r") is not None:
        _positive_rank(config["r"], "`r`")
    if peft_type == "LORA":
        _check_lora_fields(config)
    return config


def _positive_rank(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_RANK:
        raise InvalidAdapterConfig(f"{what} must be an integer in 1..{MAX_RANK}, got {quote(value)}")
    return value


def _positive_alpha(value: Any, what: str) -> float:
    # PEFT accepts any number; a zero, negative or non-finite alpha scales the update to
    # nothing or flips it, which is never a useful adapter, so it is refused here.
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value <= 0):
        raise InvalidAdapterConfig(f"{what} must be a finite number > 0, got {quote(value)}")
    return float(value)


def _check_pattern_key(key: Any, what: str) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_PATTERN_LEN:
        raise InvalidAdapterConfig(f"{what} keys must be non-empty strings up to "
                                   f"{MAX_PATTERN_LEN} characters, got {quote(key)}")
    if _NESTED_QUANTIFIER.search(key):
        raise InvalidAdapterConfig(f"{what} key {quote(key)} nests quantifiers; use a simpler pattern")
    try:
        re.compile(key)
    except re.error as exc:
        raise InvalidAdapterConfig(f"{what} key {quote(key)} is not a valid regex: {exc}") from None


def _check_lora_fields(config: dict) -> None:
    _positive_rank(config.get("r"), "`r`")
    _positive_alpha(config.get("lora_alpha"), "`lora_alpha`")
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise InvalidAdapterConfig("`target_modules` must be a list of strings, a string or null")
    saved = config.get("modules_to_save")
    if not (saved is None or (isinstance(saved, list) and all(isinstance(t, str) for t in saved))):
        raise InvalidAdapterConfig("`modules_to_save` must be a list of strings or null")
    for name, check in (("rank_pattern", _positive_rank), ("alpha_pattern", _positive_alpha)):
        pattern = config.get(name)
        if pattern is None:
            continue
        if not isinstance(pattern, dict):
            raise InvalidAdapterConfig(f"`{name}` must be an object")
        if len(pattern) > MAX_PATTERN_KEYS:
            raise InvalidAdapterConfig(f"`{name}` has {len(pattern)} entries; the limit is "
                                       f"{MAX_PATTERN_KEYS}")
        for key, value in pattern.items():
            _check_pattern_key(key, f"`{name}`")
            check(value, f"`{name}[{quote(key)}]`")


@functools.lru_cache(maxsize=16)
def _compiled(pattern_keys: tuple[str, ...]) -> list[tuple[str, re.Pattern[str]]]:
    # Compiled once per config: re's own cache holds only 512 patterns.
    return [(key, re.compile(rf"(.*\.)?({key})$")) for key in pattern_keys]


def get_pattern_key(pattern_keys: Any, key_to_match: str) -> str:
    """The first pattern key matching the module name, as peft.utils.other.get_pattern_key."""
    for key, regex in _compiled(tuple(pattern_keys)):
        if regex.match(key_to_match):
            return key
    return key_to_match


def module_rank(config: dict, module: str) -> int:
    """The LoRA rank PEFT gives `module` (a path inside the base model): rank_pattern or r."""
    pattern = config.get("rank_pattern") or {}
    return pattern.get(get_pattern_key(pattern.keys(), module), config["r"])


def module_alpha(config: dict, module: str) -> float:
    """The lora_alpha PEFT gives `module`: the matching alpha_pattern entry or lora_alpha."""
    pattern = config.get("alpha_pattern") or {}
    return float(pattern.get(get_pattern_key(pattern.keys(), module), config["lora_alpha"]))


def module_scaling(config: dict, module: str) -> float:
    """PEFT's scaling of B @ A for `module`: alpha / r, or alpha / sqrt(r) with use_rslora."""
    r = module_rank(config, module)
    alpha = module_alpha(config, module)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def module_key(tensor_module: str) -> str:
    """The module's name inside the base model, as PEFT matches patterns against it."""
    return tensor_module[len(PEFT_PREFIX):] if tensor_module.startswith(PEFT_PREFIX) else tensor_module


@dataclass
class LoraLayout:
    """What the tensors of a LoRA adapter hold, after the checks."""

    modules: dict[str, dict[str, TensorEntry]] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)

    def target_names(self) -> list[str]:
        """Sorted leaf names of the adapted modules, e.g. ["q_proj", "v_proj"]."""
        return sorted({m.rsplit(".", 1)[-1] for m in self.modules})


def _is_saved_module(name: str, config: dict) -> bool:
    # modules_to_save and (for embedding targets) the embedding layers are saved as
    # plain weights, e.g. base_model.model.lm_head.weight or ...modules_to_save.default...
    allowed = list(config.get("modules_to_save") or [])
    targets = config.get("target_modules")
    if isinstance(targets, list):
        allowed += [t for t in targets if t.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES]
    if config.get("trainable_token_indices"):
        if ".trainable_tokens_" in name:
            return True
        allowed += list(EMBEDDING_LAYER_NAMES)
    # Embedding layers adapted by LoRA are saved as "<path>.base_layer.weight".
    key = module_key(name).replace(".modules_to_save.default", "").replace(".base_layer", "")
    parts = key.split(".")[:-1]
    path = ".".join(parts)
    return any(path == m or path.endswith("." + m) for m in allowed)


def check_lora_tensors(config: dict, header: SafetensorsHeader) -> LoraLayout:
    """Check a LoRA adapter's tensor names and shapes against each other and the config."""
    layout = LoraLayout()
    for name, entry in header.tensors.items():
        if len(name) > MAX_TENSOR_NAME_LEN:
            raise TensorMismatch(f"tensor name {quote(name)} is longer than {MAX_TENSOR_NAME_LEN}")
        m = _LORA_KEY.match(name)
        if m is None:
            if _is_saved_module(name, config):
                layout.extras.append(name)
                continue
            raise TensorMismatch(
                f"tensor {quote(name)} is not in PEFT's LoRA naming "
                "(<module>.lora_A.weight / lora_B.weight / lora_embedding_A / ...) "
                "and not a module listed in `modules_to_save`")
        module = m.group("module")
        param = m.group("param").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
        layout.modules.setdefault(module, {})[param] = entry
    if not layout.modules:
        raise TensorMismatch("adapter_model.safetensors holds no LoRA tensors")
    for module, params in layout.modules.items():
        _check_module(config, module, params)
    return layout


def _check_module(config: dict, module: str, params: dict[str, TensorEntry]) -> None:
    linear = "lora_A.weight" in params or "lora_B.weight" in params
    embedding = "lora_embedding_A" in params or "lora_embedding_B" in params
    if linear and embedding:
        raise TensorMismatch(f"module {quote(module)} has both lora_A/B and lora_embedding_A/B")
    a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else (
        "lora_A.weight", "lora_B.weight")
    if a_key not in params or b_key not in params:
        missing = b_key if a_key in params else a_key
        raise TensorMismatch(f"module {quote(module)}: {missing} is missing")
    a, b = params[a_key], params[b_key]
    # Linear LoRA is 2-D; Conv1d/2d/3d LoRA keeps the kernel dims on A and 1s on B.
    allowed_ndim = (2,) if embedding else (2, 3, 4, 5)
    if len(a.shape) not in allowed_ndim or len(b.shape) != len(a.shape):
        raise TensorMismatch(f"module {quote(module)}: {a_key} has shape {list(a.shape)} and "
                             f"{b_key} {list(b.shape)}; expected matching 2-D (or conv) tensors")
    rank = module_rank(config, module_key(module))
    # A is (r, in, *kernel) or (r, num_embeddings); B is (out, r, *ones) or (dim, r).
    ra, rb = a.shape[0], b.shape[1]
    if ra != rb:
        raise TensorMismatch(f"module {quote(module)}: {a_key} has rank {ra} but {b_key} has rank {rb}")
    if ra != rank:
        raise TensorMismatch(f"module {quote(module)}: tensors have rank {ra}, the config says {rank} "
                             "(`r` or the matching `rank_pattern` entry)")
    out_features = b.shape[0]
    bias = params.get("lora_B.bias")
    if bias is not None and bias.shape != (out_features,):
        raise TensorMismatch(f"module {quote(module)}: lora_B.bias has shape {list(bias.shape)}, "
                             f"expected [{out_features}]")
    mag = params.get("lora_magnitude_vector")
    if mag is not None and mag.numel != out_features and mag.numel != a.shape[-1]:
        raise TensorMismatch(f"module {quote(module)}: lora_magnitude_vector has shape "
                             f"{list(mag.shape)}, not one entry per output feature")
