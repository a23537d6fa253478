"""adapter_config.json and its agreement with the tensors, in PEFT's own naming."""
from __future__ import annotations

import json
import math
from typing import Any

from hub.errors import InvalidAdapterConfig
from hub.formats.patterns import MAX_PATTERNS_TOTAL_LEN, check_pattern, first_key_matching
from hub.formats.safetensors_file import quote, strict_json_loads
from hub.formats.text import describe_char, unstorable_char

MAX_RANK = 65536
MAX_PATTERN_KEYS = 4096  # one entry per module of a 70B model is ~600
MAX_TENSOR_NAME_LEN = 1024  # also bounds the work user-supplied regexes do
PEFT_PREFIX = "base_model.model."


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
    for key, limit in (("base_model_name_or_path", 256), ("task_type", 64), ("peft_type", 32)):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise InvalidAdapterConfig(f"`{key}` must be a string or null")
        if config.get(key) is not None and len(config[key]) > limit:
            raise InvalidAdapterConfig(f"`{key}` must be at most {limit} characters")
        bad = unstorable_char(config.get(key) or "")
        if bad is not None:
            raise InvalidAdapterConfig(f"`{key}` holds {describe_char(bad)}; the"
                                       " registry stores printable text only")
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_alpha(value: Any, what: str) -> float:
    # PEFT accepts any number; a zero, negative or non-finite alpha scales the update to
    # nothing or flips it, which is never a useful adapter, so it is refused here.
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value <= 0):
        raise InvalidAdapterConfig(f"{what} must be a finite number > 0, got {quote(value)}")
    return float(value)


def _check_lora_fields(config: dict) -> None:
    _positive_rank(config.get("r"), "`r`")
    _positive_alpha(config.get("lora_alpha"), "`lora_alpha`")
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise InvalidAdapterConfig("`target_modules` must be a list of strings, a string or null")
    # A string target is a regex PEFT fullmatches against every module name (as is a string
    # exclude_modules, and layers_pattern): the key checks decide with them, so they get the
    # same screening as rank_pattern's keys.
    _check_patterns_total(config)
    if isinstance(targets, str) and targets != "all-linear":
        check_pattern(targets, "`target_modules`")
    for name in ("modules_to_save", "exclude_modules", "target_parameters", "layers_pattern"):
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, str) and name in ("exclude_modules", "layers_pattern"):
            value = [value]
        if not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise InvalidAdapterConfig(f"`{name}` must be a list of strings or null")
        if name != "target_parameters":
            for pattern in value:
                check_pattern(pattern, f"`{name}` entry")
    layers = config.get("layers_to_transform")
    if not (layers is None or _is_int(layers)
            or (isinstance(layers, list) and all(_is_int(i) for i in layers))):
        raise InvalidAdapterConfig("`layers_to_transform` must be an integer, a list of integers or null")
    for name in ("fan_in_fan_out", "use_rslora"):
        if config.get(name) is not None and not isinstance(config[name], bool):
            raise InvalidAdapterConfig(f"`{name}` must be true or false")
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
            check_pattern(key, f"`{name}` key")
            check(value, f"`{name}[{quote(key)}]`")


def _check_patterns_total(config: dict) -> None:
    """Refuse a config whose regexes together exceed MAX_PATTERNS_TOTAL_LEN characters
    (before any of them is compiled)."""
    total = 0
    for name in ("target_modules", "exclude_modules", "layers_pattern"):
        value = config.get(name)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        total += sum(len(v) for v in values if isinstance(v, str))
    for name in ("rank_pattern", "alpha_pattern"):
        value = config.get(name)
        if isinstance(value, dict):
            total += sum(len(key) for key in value)
    if total > MAX_PATTERNS_TOTAL_LEN:
        raise InvalidAdapterConfig(
            f"adapter_config.json's patterns (target_modules, exclude_modules, layers_pattern,"
            f" rank_pattern and alpha_pattern keys) hold {total} characters in total; the"
            f" limit is {MAX_PATTERNS_TOTAL_LEN}")


def get_pattern_key(pattern_keys: Any, key_to_match: str) -> str:
    """The first pattern key matching the module name, as peft.utils.other.get_pattern_key
    (matched with RE2: hub.formats.patterns)."""
    found = first_key_matching(tuple(pattern_keys), key_to_match)
    return key_to_match if found is None else found


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
