"""Hugging Face protocol transfer benchmark: `snapshot_download` against `lorastack pull`
of the same adapter from the same `lorastack serve`, and `upload_folder` (a commit whose
weights travel base64 in its body) against `lorastack push`, with the server's peak RSS.

    PYTHONPATH=. .venv/bin/python bench/hf_transfer.py --size 256M
    PYTHONPATH=. .venv/bin/python bench/hf_transfer.py --size 1G --stores local,s3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `hub` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (Children, MiB, RssSampler, child_env, format_size,  # noqa: E402
                           make_adapter, parse_size, vary_adapter, venv_script)
from bench.upload import Hub, start_moto  # noqa: E402

# Runs in its own process: huggingface_hub reads HF_ENDPOINT / HF_HOME when imported.
_HF_CHILD = r"""
import json, sys, time
from huggingface_hub import HfApi, snapshot_download
action, repo, path = sys.argv[1:4]
start = time.perf_counter()
if action == "download":
    snapshot_download(repo, local_dir=path)
else:
    HfApi().upload_folder(folder_path=path, repo_id=repo)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def _timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stdout}{out.stderr}")
    return time.perf_counter() - start


def _hf(hub: Hub, action: str, repo: str, path: Path, home: Path) -> float:
    env = child_env(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HOME=str(home),
                    HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
                    HF_HUB_OFFLINE="0")
    out = subprocess.run([sys.executable, "-c", _HF_CHILD, action, repo, str(path)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"huggingface_hub {action} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def run(size: int, stores: list[str]) -> list[dict]:
    """One row per (store, operation): seconds, MiB/s, server RSS growth."""
    rows = []
    children = Children()
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as tmp:
        root = Path(tmp)
        try:
            moto = start_moto(children, root) if "s3" in stores else None
            adapter = make_adapter(root / "adapter", size)
            for store in stores:
                hub = Hub(children, root, store, moto, max_upload=4 * size)
                cli = child_env(LORASTACK_ENDPOINT=hub.url, LORASTACK_TOKEN=hub.token)
                ref = "bench/big"

                def row(operation: str, seconds: float, rss: int | None) -> None:
                    rows.append({"store": store, "operation": operation, "seconds": seconds,
                                 "mib_s": adapter.size / MiB / seconds, "rss": rss})

                with RssSampler(hub.proc.pid) as rss:
                    seconds = _timed([venv_script("lorastack"), "push", str(adapter.directory),
                                      ref, "--version", "1", "--license", "mit"], cli)
                row("lorastack push", seconds, rss.growth)
                vary_adapter(adapter)
                (adapter.directory / "README.md").write_text("---\nlicense: mit\n---\n")
                with RssSampler(hub.proc.pid) as rss:
                    seconds = _hf(hub, "upload", ref, adapter.directory, root / "hf-up")
                row("HfApi.upload_folder", seconds, rss.growth)
                (adapter.directory / "README.md").unlink()
                seconds = _timed([venv_script("lorastack"), "pull", f"{ref}@1",
                                  str(root / f"pull-{store}")], cli)
                row("lorastack pull", seconds, None)
                seconds = _hf(hub, "download", ref, root / f"snap-{store}", root / "hf-down")
                row("snapshot_download", seconds, None)
                children.stop(hub.proc)
        finally:
            children.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--stores", default="local")
    args = parser.parse_args()
    size = parse_size(args.size)
    rows = run(size, args.stores.split(","))
    print(f"\nadapter: {format_size(size)} (safetensors)\n")
    print("| store | operation | seconds | MiB/s | server RSS growth |")
    print("|---|---|---|---|---|")
    for r in rows:
        rss = format_size(r["rss"]) if r["rss"] is not None else "-"
        print(f"| {r['store']} | {r['operation']} | {r['seconds']:.2f} | {r['mib_s']:.0f} |"
              f" {rss} |")


if __name__ == "__main__":
    main()
