"""Read a PEFT LoRA folder: its config, its factors and each module's scaling.

Which keys, switches, dtypes and shapes a merge accepts, how a key maps to a module and
each module's scale all come from the registry's rulebook (hub.formats), so an adapter
the registry marks mergeable is one this engine merges; here they are applied to a
folder on disk, and the weights file is hashed in the background while the merge runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
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
    UnsupportedFormat,
)
from hub.formats import (
    FOREIGN_HINT,
    MERGE_DTYPES,
    Refusal,
    TensorEntry,
    check_lora_tensors,
    config_refusal,
    looks_foreign,
    merge_refusal,
    module_alpha,
    module_scaling,
    parse_adapter_config,
    parse_readme,
    read_safetensors_header,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


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
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
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
        """Release the open safetensors file and stop hashing it if that is not done."""
        self._stop.set()
        self.digest.cancel()
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


def sha256_file(path: Path, chunk: int = 1 << 22, stop: threading.Event | None = None) -> str:
    """Hex sha256 of a file, read in chunks; gives up (InterruptedError) once `stop` is set."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if stop is not None and stop.is_set():
                raise InterruptedError(f"{path}: hashing stopped, the source was closed")
            digest.update(block)
    return digest.hexdigest()


def readme_license(folder: Path) -> str | None:
    """The `license` of the README's YAML front matter (publish's parser), or None."""
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
        foreign = _foreign_weights(folder)
        if foreign is not None:
            raise MissingFile(f"{folder}: no {CONFIG_NAME}, and {foreign.name} is no PEFT "
                              f"adapter's weights. {FOREIGN_HINT}")
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


def _foreign_weights(folder: Path) -> Path | None:
    """A .safetensors file of `folder` whose keys look kohya/diffusers (any name), or None."""
    for candidate in sorted(folder.glob("*.safetensors")):
        try:
            keys = read_safetensors_header(candidate).tensors
        except (HubError, OSError):
            continue
        if looks_foreign(keys):
            return candidate
    return None


def _weights_file(folder: Path) -> Path:
    weights_file = folder / WEIGHTS_NAME
    if weights_file.is_file():
        return weights_file
    if (folder / "adapter_model.bin").is_file():
        raise UnsupportedFormat(f"{folder}: adapter_model.bin (pickle) is not read; "
                                f"convert it to {WEIGHTS_NAME}")
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        foreign = _foreign_weights(folder)
        raise MissingFile(f"{folder}: no {WEIGHTS_NAME} (PEFT's name for the weights; found "
                          f"{', '.join(others)})" + (f". {FOREIGN_HINT}" if foreign else ""))
    raise MissingFile(f"{folder}: no {WEIGHTS_NAME}")


def _read_header(weights_file: Path) -> dict[str, TensorEntry]:
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            header = {}
            for key in handle.keys():
                tensor = handle.get_slice(key)
                header[key] = TensorEntry(tensor.get_dtype(), tuple(tensor.get_shape()), 0, 0)
            return header
    except Exception as exc:  # safetensors raises several types for damaged files
        raise InvalidSafetensors(f"{weights_file}: unreadable or truncated ({exc})") from None


def _refuse(folder: Path, refusal: Refusal | None) -> None:
    if refusal is not None:
        raise refusal.error(f"{folder}: {refusal.reason}; refusing to merge it")


def load_source(path: Path, weight: float, hasher: ThreadPoolExecutor | None = None) -> LoraSource:
    """Read and check a LoRA folder's config and safetensors header (factors load later).

    The weights are hashed in the background on `hasher` (the pool of `hashing_pool`),
    or on a thread of this call's own when none is given.
    """
    folder = Path(path)
    if folder.is_file():
        raise MissingFile(f"{folder} is a file, not an adapter folder: give the folder that"
                          " holds adapter_config.json")
    if not folder.is_dir():
        raise MissingFile(f"adapter folder not found: {folder}")
    config = _read_config(folder)
    # Before the weights: a LoHa's or a DoRA's tensors are not a plain LoRA's layout.
    _refuse(folder, config_refusal(config))
    weights_file = _weights_file(folder)
    header = _read_header(weights_file)
    try:
        layout = check_lora_tensors(config, header)
    except HubError as error:
        raise type(error)(f"{folder}: {error.detail}") from None
    _refuse(folder, merge_refusal(config, layout))
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    modules: dict[str, ModuleRef] = {}
    for m in layout.lora_modules():
        modules[m.name] = ModuleRef(m.name, m.kind, m.key_a, m.key_b, m.a.shape[0], m.b.shape[0],
                                    m.a.shape[1], module_alpha(config, m.name),
                                    module_scaling(config, m.name),
                                    fan_in_fan_out and m.kind == "linear")
    dtypes = {MERGE_DTYPES[m.a.dtype] for m in layout.lora_modules()}
    stop = threading.Event()
    return LoraSource(folder, float(weight), config, weights_file, _hash(weights_file, hasher, stop),
                      readme_license(folder), dtypes, modules, sorted(layout.ignored), _stop=stop)


def _hash(weights_file: Path, hasher: ThreadPoolExecutor | None, stop: threading.Event) -> Future:
    if hasher is not None:
        return hasher.submit(sha256_file, weights_file, stop=stop)
    with hashing_pool(1) as own:
        return own.submit(sha256_file, weights_file, stop=stop)


@contextmanager
def hashing_pool(sources: int) -> Iterator[ThreadPoolExecutor]:
    """A pool that hashes the sources' weights while their merge runs, owned by one load.

    hashlib releases the GIL on large blocks, so hashing overlaps the merge itself. On
    leaving, the pool is shut down without waiting: queued hashes still run and its
    threads end after the last one (no pool outlives the merge); on an error, queued
    hashes are cancelled.
    """
    workers = max(1, min(8, sources, os.cpu_count() or 2))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorastack-sha256")
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=False)
