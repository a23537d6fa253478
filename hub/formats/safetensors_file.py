"""Reading a safetensors file as untrusted bytes: the header, its layout, finite values.

Nothing here imports torch: the header is parsed with struct + json, and the finiteness
check inspects exponent bits with bytes.translate, so a multi-GB upload is checked at C
speed in bounded chunks without ever holding more than one chunk in memory.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from hub.errors import InvalidSafetensors, NonFiniteWeights

DEFAULT_MAX_HEADER_BYTES = 100_000_000
CHUNK_BYTES = 8 * 1024 * 1024

# Bytes per element of every dtype safetensors writes whole bytes for. Sub-byte types
# (F4, F6_*) are refused: no PEFT adapter uses them and their size rules differ.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8, "I64": 8,
    "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
    "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "C64": 8,
}
FLOAT_DTYPES = frozenset({"F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ", "F8_E8M0",
                          "F16", "BF16", "F32", "F64", "C64"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header; start/end are offsets into the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, validated header; data_offset is where the data section starts."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)
    data_offset: int = 8
    file_size: int = 8


def quote(value: object, limit: int = 200) -> str:
    """repr(value) cut to `limit` characters: untrusted names must not flood an error."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    # Two parsers that disagree on which duplicate wins could see different tensors.
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {quote(key)}")
        out[key] = value
    return out


def strict_json_loads(text: str) -> Any:
    """json.loads that refuses NaN/Infinity and duplicate keys; deep nesting -> ValueError."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _capped_nbytes(shape: tuple[int, ...], itemsize: int, cap: int) -> int:
    # Stop multiplying once past the data section: a header full of huge dimensions
    # would otherwise make big-integer products cost quadratic time.
    if 0 in shape:
        return 0
    n = itemsize
    for d in shape:
        n *= d
        if n > cap:
            break
    return n


def _parse_entry(name: str, raw: Any, data_size: int) -> TensorEntry:
    if not isinstance(raw, dict):
        raise InvalidSafetensors(f"tensor {quote(name)}: entry is not a JSON object")
    extra = set(raw) - {"dtype", "shape", "data_offsets"}
    if extra:
        raise InvalidSafetensors(f"tensor {quote(name)}: unknown fields {sorted(extra)}")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise InvalidSafetensors(f"tensor {quote(name)}: unknown dtype {quote(dtype)}; "
                                 f"known: {', '.join(sorted(DTYPE_SIZES))}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidSafetensors(f"tensor {quote(name)}: shape must be a list of non-negative ints")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(o) and o >= 0 for o in offsets)):
        raise InvalidSafetensors(f"tensor {quote(name)}: data_offsets must be [start, end] ints")
    start, end = offsets
    if start > end:
        raise InvalidSafetensors(f"tensor {quote(name)}: data_offsets start {start} > end {end}")
    entry = TensorEntry(dtype, tuple(shape), start, end)
    expected = _capped_nbytes(entry.shape, DTYPE_SIZES[dtype], data_size)
    if end - start != expected:
        needs = f"{expected}" if expected <= data_size else f"more than the {data_size}"
        raise InvalidSafetensors(
            f"tensor {quote(name)}: {dtype} shape {quote(shape)} needs {needs} bytes, "
            f"data_offsets span {end - start}")
    if end > data_size:
        raise InvalidSafetensors(
            f"tensor {quote(name)}: data ends at {end}, past the data section ({data_size} bytes); "
            "the file is truncated or the offsets are wrong")
    return entry


def _check_layout(tensors: dict[str, TensorEntry], data_size: int) -> None:
    # Sorted by offsets, the tensors must tile [0, data_size) exactly: no overlap (two
    # names aliasing bytes), no gap and no trailing bytes (room to smuggle a payload).
    pos, prev = 0, None
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if t.start < pos:
            raise InvalidSafetensors(f"tensor {quote(name)} overlaps tensor {quote(prev)}")
        if t.start > pos:
            raise InvalidSafetensors(
                f"tensor {quote(name)}: gap of {t.start - pos} bytes before it in the data section")
        pos, prev = t.end, name
    if pos != data_size:
        raise InvalidSafetensors(
            f"{data_size - pos} unused bytes after the last tensor in the data section")


def parse_safetensors_header(head: bytes, file_size: int, *,
                             max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
                             ) -> SafetensorsHeader:
    """Validate the header bytes (after the 8-byte length) of a file of file_size bytes."""
    if len(head) > max_header_bytes:
        raise InvalidSafetensors(
            f"header length {len(head)} exceeds the limit of {max_header_bytes} bytes")
    data_size = file_size - 8 - len(head)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSafetensors(f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        raw = strict_json_loads(text)
    except ValueError as exc:
        raise InvalidSafetensors(f"header is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidSafetensors("header is not a JSON object")
    metadata = raw.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidSafetensors("__metadata__ must map strings to strings")
    tensors = {name: _parse_entry(name, entry, data_size) for name, entry in raw.items()}
    for name in tensors:
        if not name:
            raise InvalidSafetensors("a tensor has an empty name")
    _check_layout(tensors, data_size)
    return SafetensorsHeader(tensors, metadata, 8 + len(head), file_size)


def read_safetensors_header(path: str | os.PathLike[str], *,
                            max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
                            ) -> SafetensorsHeader:
    """Read and validate the header and layout of the safetensors file at path."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise InvalidSafetensors(f"file has {file_size} bytes, fewer than the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n == 0:
            raise InvalidSafetensors("header length is 0")
        if n > max_header_bytes:
            raise InvalidSafetensors(f"header length {n} exceeds the limit of {max_header_bytes} bytes")
        if n > file_size - 8:
            raise InvalidSafetensors(
                f"header length {n} exceeds the {file_size - 8} bytes after it; file truncated?")
        head = fh.read(n)
    if len(head) != n:  # the file shrank under us
        raise InvalidSafetensors("file truncated while reading the header")
    return parse_safetensors_header(head, file_size, max_header_bytes=max_header_bytes)


def _table(pred: Any) -> bytes:
    return bytes(0xFF if pred(b) else 0 for b in range(256))


# Per float dtype: (word size, [(byte index in the little-endian word, table)]). A word is
# non-finite exactly when every listed byte maps to 0xFF (all exponent bits set). C64 is
# checked as pairs of F32 words.
_NONFINITE: dict[str, tuple[int, list[tuple[int, bytes]]]] = {
    "F64": (8, [(7, _table(lambda b: b & 0x7F == 0x7F)), (6, _table(lambda b: b & 0xF0 == 0xF0))]),
    "F32": (4, [(3, _table(lambda b: b & 0x7F == 0x7F)), (2, _table(lambda b: b & 0x80))]),
    "C64": (4, [(3, _table(lambda b: b & 0x7F == 0x7F)), (2, _table(lambda b: b & 0x80))]),
    "BF16": (2, [(1, _table(lambda b: b & 0x7F == 0x7F)), (0, _table(lambda b: b & 0x80))]),
    "F16": (2, [(1, _table(lambda b: b & 0x7C == 0x7C))]),
    "F8_E5M2": (1, [(0, _table(lambda b: b & 0x7C == 0x7C))]),
    "F8_E4M3": (1, [(0, _table(lambda b: b & 0x7F == 0x7F))]),  # e4m3fn: no inf, NaN only
    "F8_E4M3FNUZ": (1, [(0, _table(lambda b: b == 0x80))]),
    "F8_E5M2FNUZ": (1, [(0, _table(lambda b: b == 0x80))]),
    "F8_E8M0": (1, [(0, _table(lambda b: b == 0xFF))]),
}


def first_nonfinite(data: bytes | bytearray | memoryview, dtype: str) -> int | None:
    """Index of the first non-finite word of little-endian data of a float dtype, else None."""
    word, conditions = _NONFINITE[dtype]
    (first_byte, first_table), rest = conditions[0], conditions[1:]
    mask = bytes(data[first_byte::word]).translate(first_table)
    hit = mask.find(b"\xff")
    if hit < 0 or not rest:  # fast path: no candidate at all, or one byte decides
        return None if hit < 0 else hit
    # Combine the byte masks element-wise: AND of big integers runs in C.
    combined = int.from_bytes(mask, "little")
    del mask
    for i, table in rest:
        combined &= int.from_bytes(bytes(data[i::word]).translate(table), "little")
    if not combined:
        return None
    return ((combined & -combined).bit_length() - 1) // 8


def _scan_tensor(fh: BinaryIO, name: str, entry: TensorEntry, data_offset: int,
                 buf: bytearray) -> None:
    word = _NONFINITE[entry.dtype][0]
    elem_words = DTYPE_SIZES[entry.dtype] // word
    fh.seek(data_offset + entry.start)
    done = 0
    total = entry.end - entry.start
    while done < total:
        want = min(len(buf), total - done)
        with memoryview(buf) as whole, whole[:want] as view:
            got = fh.readinto(view)
        if got != want:
            raise InvalidSafetensors(f"tensor {quote(name)}: file truncated while reading its data")
        # The bytearray, not a memoryview: strided slices of a memoryview copy element by
        # element, about 4x slower than the same slice of a bytearray.
        idx = first_nonfinite(buf if want == len(buf) else buf[:want], entry.dtype)
        if idx is not None:
            element = (done // word + idx) // elem_words
            raise NonFiniteWeights(f"tensor {quote(name)} has a NaN or infinite value "
                                   f"(element {element}, {entry.dtype})")
        done += want


def check_finite(path: str | os.PathLike[str], header: SafetensorsHeader, *,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
    """Raise NonFiniteWeights naming the first float tensor holding a NaN or Inf."""
    chunk_bytes -= chunk_bytes % 8  # whole words of every dtype in each chunk
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be at least 8")
    buf = bytearray(chunk_bytes)
    with open(Path(path), "rb") as fh:
        for name, entry in sorted(header.tensors.items(), key=lambda kv: kv[1].start):
            if entry.dtype in FLOAT_DTYPES and entry.end > entry.start:
                _scan_tensor(fh, name, entry, header.data_offset, buf)
