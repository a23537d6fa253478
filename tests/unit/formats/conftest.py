"""Session fixtures: real PEFT adapters saved from tiny models, and per-test copies."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Callable

import pytest
from formats_support import build_adapters


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """Folders written by PeftModel.save_pretrained, keyed by kind; treat as read-only."""
    root = tmp_path_factory.mktemp("adapters")
    with warnings.catch_warnings():
        return build_adapters(root)


@pytest.fixture
def copy_adapter(adapters, tmp_path) -> Callable[[str], Path]:
    """Copy a session adapter into this test's tmp_path so it can be corrupted."""
    def copy(kind: str = "lora") -> Path:
        dst = tmp_path / kind
        shutil.copytree(adapters[kind], dst)
        return dst
    return copy
