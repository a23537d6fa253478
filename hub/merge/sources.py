"""Read a PEFT LoRA folder: its config, its factors and each module's scaling.

Only the plain LoRA update `s * B @ A` is understood; every variant whose forward a
plain LoRA cannot reproduce (DoRA, lora_bias, trained biases, modules_to_save, other
PEFT types) is refused by name rather than silently dropped.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from hub.errors import (
    HubError,
    InvalidAdapterConfig,
    InvalidSafetensors,
    MissingFile,
    NonFiniteWeights,
    TensorMismatch,
    UnsupportedFormat,
)
from hub.formats.peft_config import get_pattern_key, parse_adapter_config

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_FACTOR_RE = re.compile(
    r"^(?P<module>.+)\.(?P<factor>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")
_FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
# Config switches that change the forward beyond s * B @ A: refused when set (truthy).
_REFUSED_SWITCHES = {
    "use_dora": "DoRA (use_dora), whose magnitude vectors a plain LoRA cannot carry",
    "lora_bias": "lora_bias, whose bias on lora_B a plain LoRA cannot carry",
    "use_qalora": "QALoRA (use_qalora)",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens)",
    "target_parameters": "target_parameters (LoRA on raw parameters)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices (trained token rows)",
    "modules_to_save": "modules_to_save (fully trained modules)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "kasa_config": "KaSA (kasa_config)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
}


@dataclass(frozen=True)
class ModuleRef:
    """One LoRA-adapted module of a source: where its factors are and its scaling."""

    name: str
    kind: str  # "linear" or "embedding"
    key_a: str
    key_b: str
    rank: int
    out_features: int  # rows of B @ A
    in_features: int  # columns of B @ A
    alpha: float
    scale: float
    fan_in_fan_out: bool

    @property
    def lora_shape(self) -> tuple[int, int]:
        """Shape of B @ A, the layout every method computes in."""
        return (self.out_features, self.in_features)

    @property
    def base_shape(self) -> tuple[int, int]:
        """Shape of the base model weight this update adds to (its layout)."""
        if self.kind == "embedding" or self.fan_in_fan_out:
            return (self.in_features, self.out_features)
        return (self.out_features, self.in_features)


@dataclass
class LoraSource:
    """A loaded (header-only) LoRA adapter folder; factors are read module by module."""

    path: Path
    weight: float
    config: dict
    weights_file: Path
    digest: Future
    license: str | None
    dtypes: set[str]
    modules: dict[str, ModuleRef]
    ignored: list[str] = field(default_factory=list)
    _handle: object = field(default=None, repr=False)
    _opening: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def sha256(self) -> str:
        """Hex sha256 of adapter_model.safetensors (hashed in the background while merging)."""
        try:
            return self.digest.result()
        except OSError as exc:
            raise InvalidSafetensors(f"{self.weights_file}: cannot read ({exc})") from None

    def close(self) -> None:
        """Release the open safetensors file."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.__exit__(None, None, None)

    @property
    def base_model(self) -> str | None:
        """The base model the adapter was trained on, when its config names one."""
        value = self.config.get("base_model_name_or_path")
        return value or None

    def factors(self, ref: ModuleRef, device: torch.device, check_finite: bool = True,
                dtype: torch.dtype | None = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of a module in `dtype` (None: as stored) on `device`; refuses non-finite values if asked."""
        try:
            if self._handle is None:
                # One open file per source (re-parsing the header per module costs more than
                # the read), opened once even when several merge threads ask at the same time.
                with self._opening:
                    if self._handle is None:
                        self._handle = safe_open(str(self.weights_file), framework="pt").__enter__()
            a = self._handle.get_tensor(ref.key_a)
            b = self._handle.get_tensor(ref.key_b)
        except Exception as exc:  # safetensors raises several types for damaged files
            raise InvalidSafetensors(f"{self.weights_file}: cannot read {ref.name}: {exc}") from None
        # Move in the stored dtype, widen on the device: half the transfer for fp16 sources.
        # dtype=None leaves widening to the caller (the factored path copies straight to float64).
        a = a.to(device) if dtype is None else a.to(device).to(dtype)
        b = b.to(device) if dtype is None else b.to(device).to(dtype)
        if check_finite and not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise NonFiniteWeights(f"{self.path}: module {ref.name} has non-finite values")
        return a, b


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def readme_license(folder: Path) -> str | None:
    """The `license` of the README's YAML front matter (publish's parser), or None."""
    from hub.errors import HubError
    from hub.formats import parse_readme

    try:
        value = parse_readme((folder / "README.md").read_bytes()).front_matter.get("license")
    except (OSError, HubError):
        return None  # no README, or one the registry would refuse: the report says nothing
    if isinstance(value, list):  # several licences apply: report them all
        value = ", ".join(str(item) for item in value if item)
    return str(value).strip() or None if value else None

def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise MissingFile(f"{folder}: no {CONFIG_NAME}")
    try:
        data = path.read_bytes()
        json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterConfig(f"{path}: not readable JSON ({exc})") from None
    try:
        # The registry's own checks: a JSON object, sane r / lora_alpha, safe patterns.
        return parse_adapter_config(data)
    except HubError as error:
        raise type(error)(f"{path}: {error.detail}") from None


def _check_config(folder: Path, config: dict) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise InvalidAdapterConfig(
            f"{folder}: peft_type is {peft_type!r}; only LoRA adapters (LORA) can be merged")
    for switch, what in _REFUSED_SWITCHES.items():
        if config.get(switch):
            raise InvalidAdapterConfig(f"{folder}: uses {what}; refusing to merge it")
    if config.get("bias", "none") != "none":
        raise InvalidAdapterConfig(
            f"{folder}: trains biases (bias={config.get('bias')!r}), which a LoRA merge cannot carry")
    for name in ("r", "lora_alpha"):
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InvalidAdapterConfig(f"{folder}: {name} must be a positive number, got {value!r}")
    for name in ("rank_pattern", "alpha_pattern"):
        value = config.get(name) or {}
        if not isinstance(value, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value.values()):
            raise InvalidAdapterConfig(f"{folder}: {name} must map patterns to positive numbers")
    for name in ("fan_in_fan_out", "use_rslora"):
        if not isinstance(config.get(name, False), bool):
            raise InvalidAdapterConfig(f"{folder}: {name} must be true or false")


def _refuse_key(folder: Path, key: str) -> None:
    if "lora_magnitude_vector" in key:
        raise InvalidAdapterConfig(f"{folder}: holds DoRA magnitude vectors ({key}); refusing to merge it")
    if key.endswith("lora_B.bias"):
        raise InvalidAdapterConfig(f"{folder}: holds a lora_B bias ({key}); refusing to merge it")
    raise TensorMismatch(f"{folder}: tensor {key!r} is not a LoRA factor")


def load_source(path: Path, weight: float) -> LoraSource:
    """Read and check a LoRA folder's config and safetensors header (factors load later)."""
    folder = Path(path)
    if folder.is_file():
        raise MissingFile(f"{folder} is a file, not an adapter folder: give the folder that"
                          " holds adapter_config.json")
    if not folder.is_dir():
        raise MissingFile(f"adapter folder not found: {folder}")
    config = _read_config(folder)
    _check_config(folder, config)
    weights_file = folder / WEIGHTS_NAME
    if not weights_file.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise UnsupportedFormat(f"{folder}: adapter_model.bin (pickle) is not read; "
                                    f"convert it to {WEIGHTS_NAME}")
        raise MissingFile(f"{folder}: no {WEIGHTS_NAME}")
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            header = {key: (handle.get_slice(key).get_dtype(), handle.get_slice(key).get_shape())
                      for key in handle.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise InvalidSafetensors(f"{weights_file}: unreadable or truncated ({exc})") from None

    rslora = bool(config.get("use_rslora", False))
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    found: dict[str, dict[str, str]] = {}
    ignored: list[str] = []
    dtypes: set[str] = set()
    for key, (dtype, _shape) in header.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        match = _FACTOR_RE.match(name)
        if match is None:
            # PEFT saves an embedding's base weight next to its LoRA (save_embedding_layers);
            # it is the base model's, not part of the update.
            if name.endswith(".base_layer.weight"):
                ignored.append(key)
                continue
            _refuse_key(folder, key)
        if dtype not in _FLOAT_DTYPES:
            raise InvalidSafetensors(f"{weights_file}: tensor {key} has dtype {dtype}, not a float")
        dtypes.add(_FLOAT_DTYPES[dtype])
        found.setdefault(match.group("module"), {})[match.group("factor")] = key

    modules: dict[str, ModuleRef] = {}
    for module, factors in found.items():
        if set(factors) == {"lora_A.weight", "lora_B.weight"}:
            kind = "linear"
            key_a, key_b = factors["lora_A.weight"], factors["lora_B.weight"]
        elif set(factors) == {"lora_embedding_A", "lora_embedding_B"}:
            kind = "embedding"
            key_a, key_b = factors["lora_embedding_A"], factors["lora_embedding_B"]
        else:
            raise TensorMismatch(f"{folder}: module {module} has factors {sorted(factors)}, "
                                 f"not one A and one B")
        shape_a, shape_b = header[key_a][1], header[key_b][1]
        if len(shape_a) != 2 or len(shape_b) != 2:
            raise UnsupportedFormat(f"{folder}: module {module} has {len(shape_a)}-d factors; "
                                    f"only Linear, Conv1D and Embedding LoRA can be merged")
        rank = shape_a[0]
        if shape_b[1] != rank or rank < 1:
            raise TensorMismatch(f"{folder}: module {module}: A is {tuple(shape_a)} but B is "
                                 f"{tuple(shape_b)}")
        expected = rank_pattern.get(get_pattern_key(rank_pattern, module), config["r"])
        if int(expected) != rank:
            raise TensorMismatch(f"{folder}: module {module} has rank {rank} but the config "
                                 f"says {expected}")
        alpha = float(alpha_pattern.get(get_pattern_key(alpha_pattern, module), config["lora_alpha"]))
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        modules[module] = ModuleRef(module, kind, key_a, key_b, rank, shape_b[0], shape_a[1],
                                    alpha, scale, fan_in_fan_out and kind == "linear")
    if not modules:
        raise TensorMismatch(f"{folder}: {WEIGHTS_NAME} holds no LoRA factors")
    return LoraSource(folder, float(weight), config, weights_file, _hasher().submit(sha256_file, weights_file),
                      readme_license(folder), dtypes, modules, ignored)


_HASHER: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    # hashlib releases the GIL on large blocks, so hashing overlaps the merge itself; one
    # thread per core (up to 8), so that many sources on a many-core machine hash side by side.
    global _HASHER
    if _HASHER is None:
        workers = min(8, max(2, os.cpu_count() or 2))
        _HASHER = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorastack-sha256")
    return _HASHER
