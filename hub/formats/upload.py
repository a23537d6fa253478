"""validate_upload: every check on an uploaded adapter folder, before anything is stored."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hub.errors import HubError, InvalidAdapterConfig, InvalidRequest, MissingFile
from hub.formats.foreign import FOREIGN_HINT, looks_foreign
from hub.formats.layout import check_lora_tensors
from hub.formats.names import (
    CONFIG_FILE,
    README_FILE,
    REQUIRED_FILES,
    WEIGHTS_FILE,
    check_file_name,
    reject_pickle,
)
from hub.formats.peft_config import parse_adapter_config
from hub.formats.readme import DEFAULT_MAX_README_BYTES, ReadmeInfo, parse_readme
from hub.formats.rules import merge_refusal
from hub.formats.safetensors_file import (
    DEFAULT_MAX_HEADER_BYTES,
    SafetensorsHeader,
    check_finite,
    read_safetensors_header,
)


@dataclass(frozen=True)
class AdapterInfo:
    """What the registry records about a validated adapter."""

    peft_type: str
    r: int | None
    lora_alpha: float | None
    target_modules: list[str]
    num_parameters: int
    base_model: str | None
    mergeable: bool
    config: dict
    task_type: str | None
    readme: ReadmeInfo | None = None
    not_mergeable_reason: str | None = None  # the merge engine's refusal, when mergeable is False


def _read_limited(path: Path, limit: int, too_big: type[Exception], what: str) -> bytes:
    # Check the size before reading so a huge file is never loaded to be refused.
    size = os.path.getsize(path)
    if size > limit:
        raise too_big(f"{what} has {size} bytes; the limit is {limit}")
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


def _config_targets(config: dict) -> list[str]:
    targets = config.get("target_modules")
    if isinstance(targets, list):
        return sorted({t for t in targets if isinstance(t, str)})
    return [targets] if isinstance(targets, str) else []


def describe_adapter(config: dict, header: SafetensorsHeader) -> AdapterInfo:
    """Check the tensors against the config and summarise them (README not included)."""
    peft_type = config["peft_type"]
    num_parameters = sum(t.numel for t in header.tensors.values())
    base_model = config.get("base_model_name_or_path") or None
    task_type = config.get("task_type")
    if peft_type != "LORA":
        # Shown for information only (LoHa, LoKr, AdaLoRA also have an `r`).
        r = config.get("r")
        r = r if isinstance(r, int) and not isinstance(r, bool) and r > 0 else None
        return AdapterInfo(peft_type, r, None, _config_targets(config), num_parameters,
                           base_model, False, config, task_type,
                           not_mergeable_reason=str(merge_refusal(config, None)))
    layout = check_lora_tensors(config, header)
    # Stored either way; `mergeable` promises exactly what the merge engine accepts.
    refusal = merge_refusal(config, layout)
    return AdapterInfo(peft_type, config["r"], float(config["lora_alpha"]),
                       layout.target_names(), num_parameters, base_model, refusal is None,
                       config, task_type,
                       not_mergeable_reason=None if refusal is None else refusal.reason)


def _kohya_like(files: Mapping[str, Path], max_header_bytes: int) -> bool:
    """Whether the uploaded weights' keys look like a kohya-ss / diffusers LoRA."""
    if WEIGHTS_FILE not in files:
        return False
    try:
        header = read_safetensors_header(Path(files[WEIGHTS_FILE]), max_header_bytes=max_header_bytes)
    except HubError:
        return False
    return looks_foreign(header.tensors)


def validate_upload(files: Mapping[str, Path], *, max_config_bytes: int = 1_000_000,
                    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                    max_readme_bytes: int = DEFAULT_MAX_README_BYTES) -> AdapterInfo:
    """Validate uploaded files (name -> temp path) as a PEFT adapter; raise a HubError."""
    for name in files:
        check_file_name(name)
    for name, path in files.items():
        reject_pickle(name, path)
    for name in REQUIRED_FILES:
        if name not in files:
            if name == CONFIG_FILE and _kohya_like(files, max_header_bytes):
                raise MissingFile(f"{name} is required. {FOREIGN_HINT}")
            raise MissingFile(f"{name} is required; upload the folder PEFT's save_pretrained wrote "
                              f"({', '.join(REQUIRED_FILES)}, optional {README_FILE})")
    config = parse_adapter_config(
        _read_limited(Path(files[CONFIG_FILE]), max_config_bytes, InvalidAdapterConfig, CONFIG_FILE),
        max_bytes=max_config_bytes)
    weights = Path(files[WEIGHTS_FILE])
    header = read_safetensors_header(weights, max_header_bytes=max_header_bytes)
    info = describe_adapter(config, header)
    readme = None
    if README_FILE in files:
        readme = parse_readme(_read_limited(Path(files[README_FILE]), max_readme_bytes,
                                            InvalidRequest, README_FILE),
                              max_bytes=max_readme_bytes)
    # Last: the only check that reads every byte of the weights.
    check_finite(weights, header)
    return dataclasses.replace(info, readme=readme)
