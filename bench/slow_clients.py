"""/api/v1/health latency while many clients stall: half a request header, or a complete
header and a body shorter than its Content-Length.

Starts `lorastack serve` from a source tree (`--tree`, default this checkout) on a fresh
data folder, times `--probes` health requests alone, then opens `--clients` stalled
connections (half of each kind) and times the probes again, each with a 5 s timeout:

    .venv/bin/python bench/slow_clients.py
    .venv/bin/python bench/slow_clients.py --tree /path/to/older/checkout --workers 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _probe(url: str) -> float | None:
    started = time.perf_counter()
    try:
        requests.get(url, timeout=TIMEOUT).raise_for_status()
    except requests.RequestException:
        return None
    return time.perf_counter() - started


def _row(label: str, times: list[float | None]) -> str:
    done = [t * 1000 for t in times if t is not None]
    failed = len(times) - len(done)
    if not done:
        return f"| {label} | - | - | {failed}/{len(times)} |"
    return (f"| {label} | {statistics.median(done):.1f} | {max(done):.1f} |"
            f" {failed}/{len(times)} |")


def _stall(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        else:
            sock.sendall(b"POST /api/v1/merges/plan HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 900\r\n\r\n{")
        sockets.append(sock)
    return sockets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LORASTACK_")}
    env.update(PYTHONPATH=str(args.tree), PORT=str(port), LORASTACK_DATA_DIR=str(work / "var"),
               LORASTACK_SECRET_KEY="bench")
    command = [str(Path(sys.executable).parent / "lorastack"), "serve"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    log = open(work / "serve.log", "wb")
    server = subprocess.Popen(command, cwd=args.tree, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/v1/health"
    stalled: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while _probe(url) is None:
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("the server did not start:\n" + (work / "serve.log").read_text())
            time.sleep(0.2)
        first = (work / "serve.log").read_text().splitlines()[0]
        print(f"tree: {args.tree}\n{first}")
        print("| health probes | p50 ms | max ms | failed (> 5 s) |\n|---|---|---|---|")
        print(_row("alone", [_probe(url) for _ in range(args.probes)]), flush=True)
        stalled = _stall(port, args.clients)
        print(_row(f"with {args.clients} stalled clients",
                   [_probe(url) for _ in range(args.probes)]), flush=True)
    finally:
        for sock in stalled:
            sock.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
