"""Write a merge: a PEFT LoRA folder or a dense delta, plus merge_report.json, atomically."""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from hub.errors import InvalidMerge
from hub.formats.patterns import peft_key_matches

PREFIX = "base_model.model."
REPORT_NAME = "merge_report.json"
DELTA_NAME = "delta.safetensors"
_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def lora_keys(module: str, kind: str) -> tuple[str, str]:
    """The safetensors keys PEFT uses for a module's A and B factors."""
    if kind == "embedding":
        return f"{PREFIX}{module}.lora_embedding_A", f"{PREFIX}{module}.lora_embedding_B"
    return f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"


def pattern_key_for(name: str, names: list[str]) -> str:
    """The shortest dot-suffix of `name` (with a prefix left) that matches no other module.

    A suffix with a prefix left also satisfies older PEFT, which matched `.*\\.{key}$`.
    """
    parts = name.split(".")
    for start in range(len(parts) - 1, 0, -1):
        if parts[start].isdigit():
            continue  # "layers.0.q_proj" reads better than "0.q_proj"
        suffix = ".".join(parts[start:])
        if not any(peft_key_matches(suffix, other) for other in names if other != name):
            return suffix
    return name


def target_modules_for(names: list[str], configs: list[dict]) -> list[str]:
    """The union of the sources' target_modules when it names exactly the merged modules.

    When a source restricts targets in a way a union cannot carry (a regex, layer
    selection, exclusions), or the union would miss a module, the full names are written.
    """
    union: set[str] = set()
    exact = True
    for config in configs:
        targets = config.get("target_modules")
        if not isinstance(targets, list) or config.get("layers_to_transform") is not None \
                or config.get("exclude_modules"):
            exact = False
            break
        union.update(str(t) for t in targets)
    if exact and all(any(n == t or n.endswith("." + t) for t in union) for n in names):
        return sorted(union)
    return sorted(names)


def lora_config(ranks: dict[str, int], configs: list[dict], fan_in_fan_out: bool) -> dict:
    """adapter_config.json for the merged LoRA: scaling folded in, so lora_alpha = r."""
    names = list(ranks)
    counts = Counter(ranks.values())
    r = max(counts, key=lambda value: (counts[value], value))
    rank_pattern = {}
    for name, rank in ranks.items():
        if rank != r:
            rank_pattern[pattern_key_for(name, names)] = rank

    def common(key: str):
        values = {json.dumps(c.get(key), sort_keys=True) for c in configs}
        return configs[0].get(key) if len(values) == 1 else None

    return {
        "peft_type": "LORA",
        "task_type": common("task_type"),
        "base_model_name_or_path": common("base_model_name_or_path"),
        "revision": common("revision"),
        "r": r,
        "lora_alpha": r,
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),
        "target_modules": target_modules_for(names, configs),
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "exclude_modules": None,
    }


class SafetensorsStream:
    """Write a safetensors file tensor by tensor; the header is fixed up front from shapes."""

    def __init__(self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        header: dict[str, object] = {}
        offset = 0
        self._order = []
        for name, dtype, shape in entries:
            size = torch.tensor([], dtype=dtype).element_size()
            for dim in shape:
                size *= int(dim)
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": [int(x) for x in shape],
                            "data_offsets": [offset, offset + size]}
            self._order.append((name, dtype, tuple(int(x) for x in shape)))
            offset += size
        if metadata:
            header["__metadata__"] = metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._fh = open(path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; names, dtypes and shapes must follow the header."""
        expected, dtype, shape = self._order[self._next]
        if name != expected or tuple(tensor.shape) != shape:
            raise RuntimeError(f"stream order: expected {expected}{shape}, got {name}{tuple(tensor.shape)}")
        data = tensor.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1)
        self._fh.write(data.view(torch.uint8).numpy().tobytes())
        self._next += 1

    def abort(self) -> None:
        """Close the file after a failure (the caller discards it)."""
        self._fh.close()

    def close(self) -> None:
        """Close the file; every announced tensor must have been written."""
        self._fh.close()
        if self._next != len(self._order):
            raise RuntimeError("safetensors stream closed before all tensors were written")


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a dict of tensors as safetensors in sorted key order."""
    names = sorted(tensors)
    stream = SafetensorsStream(path, [(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names],
                               metadata)
    try:
        for name in names:
            stream.write(name, tensors[name])
    except BaseException:
        stream.abort()
        raise
    stream.close()


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def check_target(out_dir: Path) -> None:
    """Refuse an output folder that exists and is not empty, or whose parent is missing."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidMerge(f"output {out_dir} already exists and is not an empty folder")
    parent = out_dir.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise InvalidMerge(f"output parent {parent} is not a folder")
    if not parent.is_dir():
        raise InvalidMerge(f"output parent folder {parent} does not exist")


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A temp folder beside `out_dir`, moved into place only if the block succeeds."""
    out_dir = Path(out_dir).absolute()
    check_target(out_dir)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    except OSError as exc:  # permissions, a read-only mount, a full disk
        raise InvalidMerge(f"cannot write the output in {out_dir.parent}: "
                           f"{exc.strerror or exc}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked); os.replace needs it gone on some systems
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
