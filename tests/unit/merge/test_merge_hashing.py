"""Hashing the sources' weights: per merge, on threads that end with it."""
from __future__ import annotations

import hashlib
import threading
import time

import pytest

from hub.merge import sources as sources_module
from hub.merge.plan import load_sources
from hub.merge.spec import SourceSpec
from tests.support.adapters import save_lora


def _hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lorastack-sha256")]


def _wait_for_no_hashing_threads(seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while _hashing_threads() and time.monotonic() < deadline:
        for thread in _hashing_threads():
            thread.join(0.1)
    assert _hashing_threads() == []


def test_sources_are_hashed_and_no_hashing_pool_outlives_them(tmp_path):
    folders = [save_lora(tmp_path / name, seed=seed) for name, seed in (("a", 1), ("b", 2))]
    loaded = load_sources([SourceSpec(folder, 1.0) for folder in folders])
    try:
        for source, folder in zip(loaded, folders):
            expected = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
            assert source.sha256 == expected
    finally:
        for source in loaded:
            source.close()
    _wait_for_no_hashing_threads()
    assert not any(isinstance(value, sources_module.ThreadPoolExecutor)
                   for value in vars(sources_module).values())


def test_a_source_closed_before_its_hash_is_read_stops_hashing(tmp_path):
    folder = save_lora(tmp_path / "a", seed=1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):
        sources_module.sha256_file(folder / "adapter_model.safetensors", stop=stop)
    source = sources_module.load_source(folder, 1.0)
    source.close()
    _wait_for_no_hashing_threads()
