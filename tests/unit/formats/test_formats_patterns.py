"""The regexes an upload carries cost bounded memory and time, whatever their shape."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub.errors import InvalidAdapterConfig
from hub.formats import module_rank, parse_adapter_config

ROOT = Path(__file__).resolve().parents[3]


def _lora(**fields) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                       "target_modules": ["q_proj"], **fields}).encode()


# Runs in a fresh interpreter so its peak RSS is this parse's alone.
_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from hub.errors import InvalidAdapterConfig
    from hub.formats import parse_adapter_config
    raw = sys.stdin.buffer.read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    try:
        parse_adapter_config(raw)
        outcome = "accepted"
    except InvalidAdapterConfig as exc:
        outcome = exc.code + ": " + exc.detail[:200]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    print(json.dumps({"outcome": outcome, "grown_mib": grown,
                      "cpu_s": time.process_time() - start}))
""")


def _measure(raw: bytes) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _MEASURE], input=raw, capture_output=True,
                          env=env, timeout=120, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("keys, refused", [(1800, True), (100, False)])
def test_hostile_rank_pattern_keys_cost_bounded_memory_and_time(keys, refused):
    # Each key is under the per-pattern length limit, yet expands to a large program.
    hostile = {"[a-z]{1000}" * 46 + f"x{i:04d}": 2 for i in range(keys)}
    result = _measure(_lora(rank_pattern=hostile))
    assert result["outcome"].startswith("invalid_adapter_config") == refused, result
    assert result["grown_mib"] < 100, result
    assert result["cpu_s"] < 3, result


def test_patterns_over_the_total_length_limit_are_refused():
    keys = {f"layers\\.{i}\\..*q_proj_{'x' * 300}": 2 for i in range(300)}
    with pytest.raises(InvalidAdapterConfig, match="total"):
        parse_adapter_config(_lora(rank_pattern=keys))


def test_a_pattern_too_large_for_re2_is_refused_with_a_clear_message():
    with pytest.raises(InvalidAdapterConfig, match="too large"):
        parse_adapter_config(_lora(rank_pattern={"[^a]{1000}" * 40: 2}))


def test_ordinary_peft_patterns_still_work():
    keys = {f"model\\.layers\\.{i}\\.self_attn\\.(q|k)_proj": i + 1 for i in range(40)}
    config = parse_adapter_config(_lora(rank_pattern=keys, alpha_pattern={"v_proj": 3},
                                        target_modules=".*\\.(q|k|v)_proj",
                                        layers_pattern="layers"))
    assert module_rank(config, "model.layers.7.self_attn.k_proj") == 8
    assert module_rank(config, "model.layers.70.self_attn.k_proj") == 4
