"""Reading and validating uploaded adapter files without trusting them.

Only the standard library, hub.errors and PyYAML are imported: the web process can
validate a multi-GB upload without loading torch, in bounded memory.
"""
from __future__ import annotations

from hub.formats.foreign import FOREIGN_HINT, looks_foreign
from hub.formats.layout import LoraLayout, LoraModule, check_lora_tensors, is_target
from hub.formats.names import (
    ALLOWED_FILES,
    CONFIG_FILE,
    README_FILE,
    WEIGHTS_FILE,
    check_file_name,
    reject_pickle,
)
from hub.formats.peft_config import (
    PEFT_PREFIX,
    get_pattern_key,
    module_alpha,
    module_key,
    module_rank,
    module_scaling,
    parse_adapter_config,
)
from hub.formats.readme import ReadmeInfo, parse_front_matter, parse_readme
from hub.formats.rules import MERGE_DTYPES, Refusal, config_refusal, merge_refusal
from hub.formats.safetensors_file import (
    DTYPE_SIZES,
    SafetensorsHeader,
    TensorEntry,
    check_finite,
    first_nonfinite,
    parse_safetensors_header,
    read_safetensors_header,
)
from hub.formats.upload import AdapterInfo, describe_adapter, validate_upload

__all__ = [
    "ALLOWED_FILES", "CONFIG_FILE", "DTYPE_SIZES", "FOREIGN_HINT", "MERGE_DTYPES", "PEFT_PREFIX",
    "README_FILE", "WEIGHTS_FILE",
    "AdapterInfo", "ReadmeInfo", "Refusal", "SafetensorsHeader", "TensorEntry",
    "check_file_name", "check_finite", "check_lora_tensors", "config_refusal", "describe_adapter",
    "LoraLayout", "LoraModule", "first_nonfinite", "get_pattern_key", "is_target", "looks_foreign",
    "merge_refusal", "module_alpha", "module_key",
    "module_rank", "module_scaling", "parse_adapter_config",
    "parse_front_matter", "parse_readme", "parse_safetensors_header",
    "read_safetensors_header", "reject_pickle", "validate_upload",
]
