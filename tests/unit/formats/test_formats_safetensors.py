"""The safetensors file checked as untrusted bytes: header, layout, finite values."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from formats_support import read_raw, write_raw
from safetensors.torch import load_file, save_file

from hub.errors import InvalidSafetensors, NonFiniteWeights
from hub.formats import check_finite, first_nonfinite, read_safetensors_header

WEIGHTS = "adapter_model.safetensors"
ROOT = Path(__file__).resolve().parents[3]
A0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture
def weights(copy_adapter):
    return copy_adapter("lora") / WEIGHTS


def test_header_of_a_peft_file_lists_every_tensor_with_its_layout(adapters):
    path = adapters["lora"] / WEIGHTS
    header = read_safetensors_header(path)
    loaded = load_file(path)
    assert set(header.tensors) == set(loaded)
    for name, entry in header.tensors.items():
        assert entry.shape == tuple(loaded[name].shape)
        assert entry.dtype == "F32"
    assert header.metadata == {"format": "pt"}
    spans = sorted((t.start, t.end) for t in header.tensors.values())
    assert spans[0][0] == 0 and spans[-1][1] == path.stat().st_size - header.data_offset
    check_finite(path, header)


def test_truncated_file_is_refused(weights):
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-10])
    with pytest.raises(InvalidSafetensors, match="past the data section"):
        read_safetensors_header(weights)


def test_file_shorter_than_the_length_prefix_is_refused(weights):
    weights.write_bytes(b"\x10\x00\x00")
    with pytest.raises(InvalidSafetensors, match="fewer than the 8-byte"):
        read_safetensors_header(weights)


def test_header_length_beyond_the_file_is_refused(weights):
    header, data = read_raw(weights)
    write_raw(weights, header, data, length=len(json.dumps(header)) + len(data) + 1)
    with pytest.raises(InvalidSafetensors, match="exceeds the .* bytes after it"):
        read_safetensors_header(weights)


def test_header_length_over_the_cap_is_refused_before_reading_it(weights):
    with pytest.raises(InvalidSafetensors, match="exceeds the limit of 100 bytes"):
        read_safetensors_header(weights, max_header_bytes=100)


def test_zero_header_length_is_refused(weights):
    write_raw(weights, b"", b"")
    with pytest.raises(InvalidSafetensors, match="header length is 0"):
        read_safetensors_header(weights)


@pytest.mark.parametrize("head, match", [
    (b'{"a": ', "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"a": NaN}', "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_header_that_is_not_a_json_object_is_refused(weights, head, match):
    write_raw(weights, head, b"")
    with pytest.raises(InvalidSafetensors, match=match):
        read_safetensors_header(weights)


def test_duplicate_tensor_names_in_the_header_are_refused(weights):
    header, data = read_raw(weights)
    text = json.dumps(header)
    entry = json.dumps(header[A0])
    head = text[:-1] + f', "{A0}": {entry}}}'
    write_raw(weights, head.encode(), data)
    with pytest.raises(InvalidSafetensors, match="duplicate key"):
        read_safetensors_header(weights)


@pytest.mark.parametrize("metadata", [{"format": 1}, ["pt"], {"a": {"b": "c"}}])
def test_metadata_must_map_strings_to_strings(weights, metadata):
    header, data = read_raw(weights)
    header["__metadata__"] = metadata
    write_raw(weights, header, data)
    with pytest.raises(InvalidSafetensors, match="__metadata__"):
        read_safetensors_header(weights)


def _corrupt(weights, change):
    header, data = read_raw(weights)
    change(header[A0])
    write_raw(weights, header, data)


def test_unknown_dtype_is_refused_naming_the_tensor(weights):
    _corrupt(weights, lambda e: e.update(dtype="F128"))
    with pytest.raises(InvalidSafetensors, match=r"q_proj\.lora_A\.weight.*unknown dtype 'F128'"):
        read_safetensors_header(weights)


@pytest.mark.parametrize("shape", [[4, -64], [4, 64.0], "4x64", [True, 64]])
def test_shape_must_be_a_list_of_non_negative_ints(weights, shape):
    _corrupt(weights, lambda e: e.update(shape=shape))
    with pytest.raises(InvalidSafetensors, match="shape must be a list"):
        read_safetensors_header(weights)


def test_shape_that_does_not_match_the_byte_span_is_refused(weights):
    _corrupt(weights, lambda e: e.update(shape=[4, 32]))
    with pytest.raises(InvalidSafetensors, match=r"lora_A\.weight.*needs 512 bytes, data_offsets span 1024"):
        read_safetensors_header(weights)


def test_dtype_that_does_not_match_the_byte_span_is_refused(weights):
    _corrupt(weights, lambda e: e.update(dtype="F16"))
    with pytest.raises(InvalidSafetensors, match="needs 512 bytes"):
        read_safetensors_header(weights)


@pytest.mark.parametrize("offsets", [[10], [1.5, 2], [-4, 1020], "0-1024", [1024, 0]])
def test_malformed_data_offsets_are_refused(weights, offsets):
    _corrupt(weights, lambda e: e.update(data_offsets=offsets))
    with pytest.raises(InvalidSafetensors, match="data_offsets"):
        read_safetensors_header(weights)


def test_unknown_entry_field_is_refused(weights):
    _corrupt(weights, lambda e: e.update(extra=1))
    with pytest.raises(InvalidSafetensors, match="unknown fields"):
        read_safetensors_header(weights)


def _two_tensor_file(path, offsets_b, data_len):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": offsets_b}}
    write_raw(path, header, b"\x00" * data_len)


def test_overlapping_tensors_are_refused(tmp_path):
    _two_tensor_file(tmp_path / "x", [4, 12], 12)
    with pytest.raises(InvalidSafetensors, match="tensor 'b' overlaps tensor 'a'"):
        read_safetensors_header(tmp_path / "x")


def test_two_names_for_the_same_bytes_are_refused(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    write_raw(tmp_path / "x", header, b"\x00" * 8)
    with pytest.raises(InvalidSafetensors, match="overlaps"):
        read_safetensors_header(tmp_path / "x")


def test_gap_between_tensors_is_refused(tmp_path):
    _two_tensor_file(tmp_path / "x", [12, 20], 20)
    with pytest.raises(InvalidSafetensors, match="tensor 'b': gap of 4 bytes"):
        read_safetensors_header(tmp_path / "x")


def test_trailing_bytes_after_the_last_tensor_are_refused(weights):
    with weights.open("ab") as fh:
        fh.write(b"\x80\x04payload")
    with pytest.raises(InvalidSafetensors, match="9 unused bytes after the last tensor"):
        read_safetensors_header(weights)


def test_empty_and_zero_size_tensors_are_valid_layouts(tmp_path):
    header = {"z": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
              "a": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]}}
    write_raw(tmp_path / "x", header, b"\x00\x00")
    parsed = read_safetensors_header(tmp_path / "x")
    assert parsed.tensors["a"].numel == 1 and parsed.tensors["z"].numel == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_is_refused_naming_the_tensor(tmp_path, dtype, bad):
    good = torch.randn(16, 8, dtype=dtype)
    broken = torch.randn(4, 300, dtype=dtype)
    broken[3, 123] = bad
    path = tmp_path / WEIGHTS
    save_file({"good": good, "broken.lora_A.weight": broken}, path)
    header = read_safetensors_header(path)
    with pytest.raises(NonFiniteWeights, match=r"'broken\.lora_A\.weight'.*element 1023"):
        check_finite(path, header, chunk_bytes=64)  # small chunks: crosses chunk boundaries


def test_peft_adapter_with_a_nan_weight_is_refused(adapters, tmp_path):
    tensors = load_file(adapters["lora"] / WEIGHTS)
    tensors[A0][1, 2] = math.nan
    path = tmp_path / WEIGHTS
    save_file(tensors, path)
    with pytest.raises(NonFiniteWeights, match="q_proj.lora_A.weight"):
        check_finite(path, read_safetensors_header(path))


def test_large_finite_values_and_integers_pass_the_finite_check(tmp_path):
    path = tmp_path / WEIGHTS
    save_file({"big32": torch.tensor([3.0e38, -3.0e38, 1e-45]),
               "big16": torch.tensor([65504.0, -65504.0], dtype=torch.float16),
               "bigbf": torch.tensor([3.0e38, -1e-38], dtype=torch.bfloat16),
               "big64": torch.tensor([1.7e308, 5e-324], dtype=torch.float64),
               "ints": torch.tensor([-1, 0x7FF0000000000000], dtype=torch.int64)}, path)
    check_finite(path, read_safetensors_header(path))


@pytest.mark.parametrize("dtype, name, word", [
    (torch.float32, "F32", torch.int32), (torch.float64, "F64", torch.int64)])
def test_bit_level_check_agrees_with_torch_on_random_bit_patterns(dtype, name, word):
    gen = torch.Generator().manual_seed(1)
    bits = torch.randint(-2**31, 2**31 - 1, (50_000,), generator=gen, dtype=torch.int64)
    if word is torch.int32:
        bits = bits.to(torch.int32)
    else:
        bits = bits * 2**32 + torch.randint(0, 2**31, bits.shape, generator=gen)
    # Force many exponent-all-ones patterns so NaN, Inf and near-misses all occur.
    exp_mask = 0x7F800000 if word is torch.int32 else 0x7FF0000000000000
    bits[::3] |= exp_mask
    values = bits.view(dtype)
    raw = values.numpy().tobytes()
    size = values.element_size()
    for i in range(0, len(values), 997):
        chunk = raw[i * size:(i + 50) * size]
        expected = torch.nonzero(~torch.isfinite(values[i:i + 50]))
        got = first_nonfinite(chunk, name)
        assert got == (int(expected[0]) if len(expected) else None)


@pytest.mark.parametrize("name, dtype", [
    ("F16", torch.float16), ("BF16", torch.bfloat16), ("F8_E4M3", torch.float8_e4m3fn),
    ("F8_E5M2", torch.float8_e5m2), ("F8_E4M3FNUZ", torch.float8_e4m3fnuz),
    ("F8_E5M2FNUZ", torch.float8_e5m2fnuz), ("F8_E8M0", torch.float8_e8m0fnu)])
def test_bit_level_check_agrees_with_torch_on_every_value_of_small_floats(name, dtype):
    size = torch.empty((), dtype=dtype).element_size()
    every = torch.arange(256 ** size, dtype=torch.int64)
    raw = b"".join(int(v).to_bytes(size, "little") for v in every)
    values = torch.frombuffer(bytearray(raw), dtype=dtype)
    finite = torch.isfinite(values.float())
    for i in range(len(values)):
        got = first_nonfinite(raw[i * size:(i + 1) * size], name)
        assert (got is None) == bool(finite[i]), hex(i)


def test_large_file_is_checked_with_flat_python_memory(tmp_path):
    path = tmp_path / WEIGHTS
    n = 16 * 1024 * 1024  # 64 MB of F32
    header = {"big": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
    head = json.dumps(header).encode()
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
        block = struct.pack("<f", 0.5) * (1024 * 1024)
        for _ in range(16):
            fh.write(block)
    del block
    tracemalloc.start()
    try:
        parsed = read_safetensors_header(path)
        check_finite(path, parsed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size > 64_000_000
    assert peak < 24_000_000, f"peak Python allocation {peak} bytes for a 64 MB file"


def test_importing_the_formats_package_does_not_load_torch():
    code = "import sys, hub.formats; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0
