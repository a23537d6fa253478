"""Helpers for the benchmarks: synthetic LoRA adapters, child processes, RSS sampling."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

MiB = 1024 * 1024
GiB = 1024 * MiB

# The same dummy credentials and scrubbed variables as the tests' moto fixture.
from tests.support.moto_server import _UNSET, MOTO_ENV, free_port  # noqa: E402,F401

HIDDEN = 4096
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
BLOCK = 4 * MiB  # the random fp16 block the data section repeats


def parse_size(text: str) -> int:
    """'10M', '1G', '512K' or a plain byte count -> bytes (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": MiB, "G": GiB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def format_size(n: int) -> str:
    """Bytes as the short binary label the --sizes flag takes."""
    for unit, scale in (("G", GiB), ("M", MiB), ("K", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n / MiB:.1f}M"


def _finite_fp16(n: int) -> bytes:
    """n random bytes that are finite little-endian fp16 words (|x| < 16)."""
    raw = bytearray(os.urandom(n))
    # Clear two exponent bits of every high byte: exponent <= 0b10011, never all ones.
    table = bytes(b & 0x9F for b in range(256))
    raw[1::2] = bytes(raw[1::2]).translate(table)
    return bytes(raw)


@dataclass
class Adapter:
    """A synthetic adapter folder on disk and where its tensor data starts."""

    directory: Path
    weights: Path
    data_offset: int
    size: int  # bytes of adapter_model.safetensors
    files: list[Path] = field(default_factory=list)


def make_adapter(directory: Path, target_bytes: int) -> Adapter:
    """Write a valid LoRA adapter whose safetensors is about `target_bytes`, streaming."""
    directory.mkdir(parents=True, exist_ok=True)
    r = 256 if target_bytes >= 256 * MiB else 16
    module_bytes = 2 * (r * HIDDEN * 2)  # lora_A (r, k) + lora_B (d, r), fp16
    modules = max(1, round(target_bytes / module_bytes))
    header: dict = {}
    offset = 0
    for i in range(modules):
        layer, proj = divmod(i, len(TARGETS))
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{TARGETS[proj]}"
        for param, shape in (("lora_A", [r, HIDDEN]), ("lora_B", [HIDDEN, r])):
            nbytes = shape[0] * shape[1] * 2
            header[f"{prefix}.{param}.weight"] = {"dtype": "F16", "shape": shape,
                                                  "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors pads the header to 8 bytes
    weights = directory / "adapter_model.safetensors"
    block = _finite_fp16(BLOCK)
    with open(weights, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)))
        fh.write(head)
        left = offset
        while left:
            chunk = block[:min(left, len(block))]
            fh.write(chunk)
            left -= len(chunk)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
              "lora_dropout": 0.0, "target_modules": list(TARGETS), "bias": "none",
              "base_model_name_or_path": "bench/llama-like-4096", "fan_in_fan_out": False,
              "inference_mode": True}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return Adapter(directory, weights, 8 + len(head), weights.stat().st_size,
                   [directory / "adapter_config.json", weights])


def vary_adapter(adapter: Adapter) -> None:
    """Overwrite the first 64 data bytes with fresh finite values: a new sha256, new blob."""
    with open(adapter.weights, "r+b") as fh:
        fh.seek(adapter.data_offset)
        fh.write(_finite_fp16(64))


def child_env(**extra: str) -> dict[str, str]:
    """This environment without real AWS settings, with dummy credentials and `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in _UNSET and not k.startswith("LORASTACK_")}
    env.update(MOTO_ENV)
    env.update(extra)
    return env


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Poll `url` until it answers (any status) or fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer; log tail:\n"
                       + log.read_text(errors="replace")[-3000:])


class Children:
    """Child processes started in their own process groups, all stopped by `close`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """Start argv with output to `log` (a full pipe would block the child)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM the child's process group (gunicorn workers too), then SIGKILL."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        """Stop every child still running."""
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def tree_rss(pid: int) -> int:
    """RSS in bytes of the process and all its descendants (gunicorn master + workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler:
    """Samples the RSS of a process tree every `interval` s in a thread; keeps the max."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = tree_rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))

    @property
    def growth(self) -> int:
        """Peak minus the RSS before the sampled operation, in bytes."""
        return self.peak - self.baseline


def venv_script(name: str) -> str:
    """The console script `name` installed beside this Python."""
    return str(Path(sys.executable).parent / name)
