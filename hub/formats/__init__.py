"""Reading and validating uploaded adapter files without trusting them.

Only the standard library, hub.errors and PyYAML are imported: the web process can
validate a multi-GB upload without loading torch, in bounded memory.
"""
from __future__ import annotations

from hub.formats.names import (
    ALLOWED_FILES, CONFIG_FILE, README_FILE, WEIGHTS_FILE, check_file_name, reject_pickle,
)
from hub.formats.peft_config import (
    LoraLayout, check_lora_tensors, get_pattern_key, module_alpha, module_key, module_rank,
    module_scaling, parse_adapter_config,
)
from hub.formats.readme import ReadmeInfo, parse_front_matter, parse_readme
from hub.formats.safetensors_file import (
    DTYPE_SIZES, SafetensorsHeader, TensorEntry, check_finite, first_nonfinite,
    parse_safetensors_header, read_safetensors_header,
)
from hub.formats.upload import AdapterInfo, describe_adapter, validate_upload

__all__ = [
    "ALLOWED_FILES", "CONFIG_FILE", "DTYPE_SIZES", "README_FILE", "WEIGHTS_FILE",
    "AdapterInfo", "ReadmeInfo", "SafetensorsHeader", "TensorEntry",
    "check_file_name", "check_finite", "check_lora_tensors", "describe_adapter",
    "LoraLayout", "first_nonfinite", "get_pattern_key", "module_alpha", "module_key",
    "module_rank", "module_scaling", "parse_adapter_config",
    "parse_front_matter", "parse_readme", "parse_safetensors_header",
    "read_safetensors_header", "reject_pickle", "validate_upload",
]
