"""Merge service benchmark on LLaMA-7B shapes: the API end to end vs `lorastack merge-local`,
the latency of a cache hit, and merges per minute with two Celery workers.

    python bench/merge_service.py [--layers 32] [--repeat 3] [--hits 50] [--queued 20]
    LORASTACK_DEVICE=cuda python bench/merge_service.py     # workers and merge-local on the GPU

Three synthetic float16 r16 adapters (bench/merge.py's LLaMA-7B shapes) are published
through the API to a real `lorastack serve` on a temp data dir (SQLite + local store).
The first two rows use the inline queue (a worker thread in the server); the throughput
row restarts the server with LORASTACK_QUEUE=celery, a private redis-server and two
`lorastack worker` processes. Everything runs under a temp dir that is removed at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `hub` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench._common import Children, child_env, free_port, venv_script, wait_http  # noqa: E402
from bench.merge import WEIGHTS, make_adapter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
USER = "bench"
E2E_TARGET = 1.5       # the API end to end within 1.5x of merge-local
HIT_TARGET_MS = 100.0  # a cache hit answers within 100 ms
POLL = 0.05            # seconds between two GETs of a running merge
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def lorastack(*args: str) -> list[str]:
    """argv of a `lorastack` command: the console script beside this Python, or the same
    entry point through this Python where the package is not installed (a GPU machine)."""
    script = Path(venv_script("lorastack"))
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "import sys; from hub.cli import main; sys.exit(main())",
            *args]


class Server:
    """`lorastack serve` on `data_dir`, with the bench user's token and an HTTP session."""

    def __init__(self, children: Children, data_dir: Path, env: dict[str, str],
                 log: Path, token: str | None = None) -> None:
        self.children = children
        if token is None:
            out = subprocess.run(lorastack("users", "create", USER), env=env,
                                 capture_output=True, text=True, check=True)
            token = out.stdout.strip().splitlines()[-1]
        self.token = token
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.proc = children.start(lorastack("serve", "--port", port), env, log)
        wait_http(f"{self.url}/api/v1/health", self.proc, log)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def publish(self, name: str, folder: Path) -> None:
        """Publish the folder as bench/<name>@1.0."""
        with contextlib.ExitStack() as stack:
            files = [("files", (p.name, stack.enter_context(open(p, "rb"))))
                     for p in sorted(folder.iterdir())]
            response = self.session.post(f"{self.url}/api/v1/adapters/{USER}/{name}/versions",
                                         data={"version": "1.0", "license": "apache-2.0"},
                                         files=files, timeout=None)
        if response.status_code != 201:
            raise RuntimeError(f"publish {name}: HTTP {response.status_code} {response.text[:500]}")

    def submit(self, weights: list[float]) -> requests.Response:
        """POST a linear --rank 16 merge of the three sources with `weights`."""
        body = {"sources": [{"adapter": f"{USER}/a{i}", "version": "1.0", "weight": w}
                            for i, w in enumerate(weights)], "method": "linear", "rank": 16}
        response = self.session.post(f"{self.url}/api/v1/merges", json=body, timeout=60)
        if response.status_code not in (200, 202):
            raise RuntimeError(f"merge: HTTP {response.status_code} {response.text[:500]}")
        return response

    def wait(self, merge_id: str, timeout: float = 1800) -> dict:
        """Poll the merge every POLL s until it ends; its final view."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.session.get(f"{self.url}/api/v1/merges/{merge_id}", timeout=60).json()
            if body["status"] not in ("queued", "running"):
                if body["status"] != "succeeded":
                    raise RuntimeError(f"merge {merge_id} {body['status']}: {body['error']}")
                return body
            time.sleep(POLL)
        raise RuntimeError(f"merge {merge_id} did not end in {timeout} s")

    def close(self) -> None:
        """Stop the server."""
        self.session.close()
        self.children.stop(self.proc)


def weights_for(run: int) -> list[float]:
    """Distinct weights per run, so every merge is computed (no cache hit)."""
    return [WEIGHTS[0] + run * 1e-3, *WEIGHTS[1:3]]


def api_merge(server: Server, run: int, work: Path) -> tuple[float, float]:
    """Submit, wait, download the archive and unzip it; (wall s, the worker's run s)."""
    out = work / f"api-{run}"
    start = time.perf_counter()
    merge_id = server.submit(weights_for(run)).json()["id"]
    view = server.wait(merge_id)
    archive = work / f"api-{run}.zip"
    with server.session.get(f"{server.url}/api/v1/merges/{merge_id}/archive", stream=True,
                            timeout=600) as response:
        response.raise_for_status()
        with open(archive, "wb") as fh:
            fh.writelines(response.iter_content(4 << 20))
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(out)
    elapsed = time.perf_counter() - start
    if not (out / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"the archive of {merge_id} has no adapter_model.safetensors")
    ran = (_time(view["finished_at"]) - _time(view["started_at"]))
    archive.unlink()
    shutil.rmtree(out)
    return elapsed, ran


def local_merge(sources: list[Path], run: int, work: Path,
                env: dict[str, str]) -> tuple[float, float]:
    """`lorastack merge-local` on the same files and weights, in a fresh process; (wall s,
    the merge's own s as it reports them: without start-up and imports)."""
    out = work / f"local-{run}"
    argv = lorastack("merge-local", *[f"{p}:{w}" for p, w in zip(sources, weights_for(run))],
                     "--method", "linear", "--rank", "16",
                     "--device", env.get("LORASTACK_DEVICE", "cpu"), "-o", str(out))
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"merge-local failed:\n{proc.stderr[-2000:]}")
    shutil.rmtree(out)
    merged = re.search(r", ([0-9.]+)s on ", proc.stdout)
    return elapsed, float(merged.group(1)) if merged else float("nan")


def _time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def cache_hits(server: Server, count: int) -> list[float]:
    """Latency of POSTing an already succeeded spec again (the same requester: 200), in s."""
    server.wait(server.submit(weights_for(0)).json()["id"])
    times = []
    for _ in range(count):
        start = time.perf_counter()
        response = server.submit(weights_for(0))
        times.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise RuntimeError(f"expected a cache hit (200), got {response.status_code}")
    return times


def throughput(server: Server, queued: int, first_run: int) -> tuple[float, float]:
    """Queue `queued` distinct merges at once; (merges per minute, wall s) until all ended."""
    start = time.perf_counter()
    ids = [server.submit(weights_for(first_run + i)).json()["id"] for i in range(queued)]
    for merge_id in ids:
        server.wait(merge_id)
    elapsed = time.perf_counter() - start
    return queued / elapsed * 60, elapsed


def start_celery(children: Children, root: Path, env: dict[str, str], workers: int,
                 device: str) -> dict[str, str]:
    """A private redis-server and `workers` lorastack workers; the env that points at them."""
    port = free_port()
    redis = children.start([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no"], env, root / "redis.log")
    deadline = time.monotonic() + 20
    while "Ready to accept connections" not in (root / "redis.log").read_text(errors="replace"):
        if redis.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start:\n" + (root / "redis.log").read_text())
        time.sleep(0.1)
    celery_env = {**env, "LORASTACK_QUEUE": "celery",
                  "LORASTACK_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    logs = []
    for i in range(workers):
        log = root / f"worker-{i}.log"
        children.start(lorastack("worker", "--device", device, "--name", f"bench-{i}@%h"),
                       celery_env, log)
        logs.append(log)
    deadline = time.monotonic() + 120
    while not all(" ready." in log.read_text(errors="replace") for log in logs):
        if time.monotonic() > deadline:
            raise RuntimeError("a worker did not start:\n" + logs[0].read_text()[-3000:])
        time.sleep(0.2)
    return celery_env


def main(argv: list[str] | None = None) -> int:
    """Build and publish the adapters, time each row, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="end-to-end runs of each side")
    parser.add_argument("--hits", type=int, default=50, help="cache-hit requests")
    parser.add_argument("--queued", type=int, default=20, help="merges queued for throughput")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-celery", action="store_true",
                        help="measure throughput on the inline queue (one worker thread)")
    parser.add_argument("--tmp", default=None, help="where the temp folder goes")
    args = parser.parse_args(argv)
    device = os.environ.get("LORASTACK_DEVICE", "cpu")
    t0 = time.perf_counter()
    children = Children()
    root = Path(tempfile.mkdtemp(prefix="lorastack-bench-service-", dir=args.tmp))
    try:
        rows, missed = run(args, device, children, root)
    finally:
        children.close()
        shutil.rmtree(root, ignore_errors=True)
    header = ["row", "sources", "ours", "reference", "ratio", "target", "notes"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    print(f"device={device} layers={args.layers} repeat={args.repeat} (medians); total bench "
          f"{time.perf_counter() - t0:.0f}s; 1-min load {os.getloadavg()[0]:.2f}. Server: "
          f"lorastack serve, SQLite + local store; merge-local runs in a fresh process.")
    for line in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    return 1 if missed else 0


def run(args, device: str, children: Children, root: Path) -> tuple[list[list[str]], bool]:
    """Every row of the table; and whether a target was missed."""
    env = child_env(LORASTACK_DATA_DIR=str(root / "data"), LORASTACK_DEVICE=device,
                    LORASTACK_MAX_ACTIVE_MERGES=str(max(args.queued, 4) + 4),
                    PYTHONPATH=str(ROOT))
    sources = [make_adapter(root / f"a{i}", args.layers, 16, seed=i) for i in range(3)]
    mib = sum((s / "adapter_model.safetensors").stat().st_size for s in sources) / 2**20
    work = root / "work"
    work.mkdir()
    rows: list[list[str]] = []
    missed = False
    server = Server(children, root / "data", {**env, "LORASTACK_QUEUE": "inline"},
                    root / "serve-inline.log")
    for i, folder in enumerate(sources):
        server.publish(f"a{i}", folder)
    print(f"published 3 x r16 ({mib:.0f} MiB) in {args.layers} layers", flush=True)
    # Warm the server's worker (torch, kernels, its source cache) as a running hub has it.
    api_merge(server, 1000, work)
    ours, local, ran, local_merged = [], [], [], []
    for run_ in range(args.repeat):  # alternating, so drifting load hits both sides
        elapsed, worker_s = api_merge(server, run_, work)
        ours.append(elapsed)
        ran.append(worker_s)
        wall, merged = local_merge(sources, run_, work, env)
        local.append(wall)
        local_merged.append(merged)
        print(f"  run {run_}: api {elapsed:.2f} s (worker {worker_s:.2f} s), "
              f"merge-local {wall:.2f} s (merge {merged:.2f} s)", flush=True)
    t_api, t_local = statistics.median(ours), statistics.median(local)
    ratio = t_api / t_local
    missed |= ratio > E2E_TARGET
    rows.append(["API: submit -> archive unzipped (linear --rank 16)", "3 x r16",
                 f"{t_api:.2f} s", f"merge-local {t_local:.2f} s", f"{ratio:.2f}x",
                 f"<{E2E_TARGET}x {'met' if ratio <= E2E_TARGET else 'MISSED'}",
                 (f"worker run {statistics.median(ran):.2f} s, merge-local's merge alone "
                  f"{statistics.median(local_merged):.2f} s; in {mib:.0f} MiB")])
    hits = cache_hits(server, args.hits)
    p50 = statistics.median(hits) * 1000
    p95 = statistics.quantiles(hits, n=100, method="inclusive")[94] * 1000
    missed |= p50 > HIT_TARGET_MS
    rows.append(["cache hit: POST the same spec again (200)", "3 x r16", f"p50 {p50:.1f} ms",
                 f"p95 {p95:.1f} ms", "",
                 f"<{HIT_TARGET_MS:.0f} ms {'met' if p50 <= HIT_TARGET_MS else 'MISSED'}",
                 f"{args.hits} requests, one at a time"])
    sequential = 60 / t_api
    if args.no_celery:
        rate, wall = throughput(server, args.queued, 2000)
        server.close()
        label, note = "merges/min, inline queue", "--no-celery: the server's one worker thread"
    else:
        token = server.token
        server.close()
        celery_env = start_celery(children, root, env, args.workers, device)
        server = Server(children, root / "data", celery_env, root / "serve-celery.log", token)
        # One warm-up merge per worker (torch, its source cache), as a running hub has them.
        for merge_id in [server.submit(weights_for(3000 + i)).json()["id"]
                         for i in range(args.workers)]:
            server.wait(merge_id)
        rate, wall = throughput(server, args.queued, 2000)
        server.close()
        label = f"merges/min, {args.workers} celery workers"
        note = "workers warmed by one merge each first"
    rows.append([f"{label}, {args.queued} queued", "3 x r16", f"{rate:.1f}/min",
                 f"one at a time (row 1) {sequential:.1f}/min", f"{rate / sequential:.2f}x", "",
                 f"{wall:.1f} s submit -> all succeeded; {note}"])
    return rows, missed


def _terminate(_signum, _frame) -> None:
    raise KeyboardInterrupt  # main's finally stops the children and removes the temp dir


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    raise SystemExit(main())
