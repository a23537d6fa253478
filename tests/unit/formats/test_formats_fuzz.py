"""Corrupted bytes anywhere give a HubError, never a raw exception."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from formats_support import files_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.errors import HubError
from hub.formats import validate_upload

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def _mutate(blob: bytes, flips: list[tuple[int, int]], cut: int | None,
            insert: bytes) -> bytes:
    data = bytearray(blob)
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % (len(data) + 1):]
    return bytes(data) + insert


mutations = dict(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 10**6),
    insert=st.binary(max_size=8),
    target=st.sampled_from([WEIGHTS, WEIGHTS, WEIGHTS, CONFIG, "README.md"]),
    header_only=st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**mutations)
def test_corrupted_upload_raises_only_hub_errors(adapters, flips, cut, insert, target,
                                                 header_only):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "a"
        shutil.copytree(adapters["lora"], folder)
        path = folder / target
        blob = path.read_bytes()
        if header_only and target == WEIGHTS:
            # Aim the flips at the length prefix and JSON header, where parsing happens.
            head_len = int.from_bytes(blob[:8], "little") + 8
            flips = [(pos % head_len, value) for pos, value in flips]
        path.write_bytes(_mutate(blob, flips, cut, insert))
        try:
            validate_upload(files_of(folder))
        except HubError as exc:
            assert 400 <= exc.status < 500 and exc.detail
