"""Catalog benchmark: list, search and page a large catalog through `lorastack serve`.

Fills a fresh database (SQLite, PostgreSQL or both) with N adapters through the project's
own migrated schema and models (users, adapters with their tags and versions, in batches
through the ORM, so the search columns and the full-text index are kept by the same code
and triggers as a publish), with Zipf-like tags, words and downloads and 5% private
adapters; then starts `lorastack serve` on it and times each query type of the catalog
with 1 client and with 16 clients (threads, each on its own keep-alive connection),
next to /api/v1/health on the same server as the floor. Each backend is measured twice
by default: with the server's listing cache (its default; a repeated listing is served
from the process's memory) and with it off (`LORASTACK_CATALOG_CACHE_SECONDS=0`: every
listing computed, as the first one after a catalog write is).

    .venv/bin/python bench/catalog.py --adapters 100000 --backend both
    .venv/bin/python bench/catalog.py --adapters 20000 --backend sqlite --seconds 2
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

if __package__ in (None, ""):  # run as a script: make `bench` and `hub` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Children, child_env, free_port, venv_script, wait_http  # noqa: E402
from hub.cli.serving import default_workers  # noqa: E402

POSTGRES_ADMIN = os.environ.get("LORASTACK_TEST_POSTGRES_URL",
                                "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parent.parent
BATCH = 2000
ADAPTERS_PER_OWNER = 50
PRIVATE_SHARE = 0.05
# Words of names and descriptions; the first ones are the common ones (Zipf).
WORDS = ("sql chat code instruct math summarize translate story poem legal medical"
         " finance json agent reason vision speech tool function roleplay tutor review"
         " german french spanish japanese korean arabic hindi qa rag retrieval classify"
         " sentiment extract ner dialogue email essay recipe music lyrics physics chemistry"
         " biology history geography puzzle chess game shader rust golang kotlin swift"
         " haskell ocaml erlang elixir").split()
TAGS = ("lora text-generation peft conversational code instruct chat sql math en"
        " multilingual json agents rag safety roleplay vision tiny 4bit qlora").split()
BASES = ("mistralai/Mistral-7B-v0.1", "meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B",
         "google/gemma-7b", "Qwen/Qwen2-7B", "microsoft/phi-2", "tiiuae/falcon-7b")
LICENSES = ("apache-2.0", "mit", "llama2", "llama3", "cc-by-4.0", "gemma", "openrail")
RARE = "quokkawise"   # in the description of about ten adapters
PREFIX = "mistr"      # starts "mistral" (in a name or base-model word of many adapters)
COMMON = "python"


def zipf_pick(rng: random.Random, items, weights, k: int = 1) -> list:
    """k distinct items, the early ones far more likely (weights 1/rank)."""
    chosen: list = []
    while len(chosen) < min(k, len(items)):
        item = rng.choices(items, weights)[0]
        if item not in chosen:
            chosen.append(item)
    return chosen


def fill(url: str, adapters: int, seed: int = 15) -> None:
    """Migrate `url` and fill it with `adapters` adapters, their owners, tags and versions."""
    from sqlalchemy import text

    from hub.db import Database, upgrade
    from hub.models import Adapter, AdapterTag, User, Version

    upgrade(url)
    rng = random.Random(seed)
    word_weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    tag_weights = [1 / (rank + 1) ** 0.7 for rank in range(len(TAGS))]
    db = Database(url)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    owners = max(1, adapters // ADAPTERS_PER_OWNER)
    with db.session() as session:
        users = [User(name=f"user{i:05d}") for i in range(owners)]
        session.add_all(users)
        session.flush()
        owner_ids = [user.id for user in users]
    rare = set(rng.sample(range(adapters), min(10, adapters)))
    for first in range(0, adapters, BATCH):
        with db.session() as session:
            for i in range(first, min(first + BATCH, adapters)):
                session.add(_adapter(rng, i, owner_ids[i % owners], start, word_weights,
                                     tag_weights, i in rare, Adapter, AdapterTag, Version))
        print(f"  filled {min(first + BATCH, adapters)}/{adapters}", end="\r", flush=True)
    print()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        db.optimize()
    db.dispose()


def _adapter(rng, i, owner_id, start, word_weights, tag_weights, rare, Adapter, AdapterTag,
             Version):
    words = zipf_pick(rng, WORDS, word_weights, rng.randint(1, 3))
    if rng.random() < 0.05:  # the common word: in about 16% of adapters, as in issue 15
        words.insert(0, COMMON)
    base = BASES[min(int(rng.paretovariate(1.2)) - 1, len(BASES) - 1)]
    family = base.split("/")[1].split("-")[0].lower()
    name = f"{family}-{'-'.join(words)}-{i}"
    description = " ".join(zipf_pick(rng, WORDS, word_weights, rng.randint(3, 12)))
    if rng.random() < 0.12:
        description += f" {COMMON}"
    if rare:
        description += f" {RARE}"
    description = f"A {family} adapter for {description}."
    tags = zipf_pick(rng, TAGS, tag_weights, rng.randint(1, 5))
    created = start + timedelta(minutes=i * 3 + rng.randint(0, 2))
    labels = ["1.0"] + (["1.1"] if rng.random() < 0.6 else [])
    license_id = rng.choice(LICENSES)
    adapter = Adapter(owner_id=owner_id, name=name, description=description, base_model=base,
                      license=license_id, task="text-generation",
                      visibility="private" if rng.random() < PRIVATE_SHARE else "public",
                      downloads=int(rng.paretovariate(1.1)) - 1, created_at=created,
                      updated_at=created + timedelta(hours=len(labels)),
                      tags=[AdapterTag(tag=tag, position=p) for p, tag in enumerate(tags)])
    adapter.versions = [
        Version(label=label, created_at=created + timedelta(hours=n), license=license_id,
                base_model=base, peft_type="LORA", task_type="CAUSAL_LM", r=16,
                lora_alpha=32.0, target_modules=["q_proj", "v_proj"],
                num_parameters=6_815_744, size_bytes=27_280_000, mergeable=True,
                fingerprint=uuid.uuid4().hex * 2, yanked=False)
        for n, label in enumerate(labels)]
    return adapter


def queries(url: str) -> dict[str, object]:
    """Each query type: a fixed path, or a callable that gives the next path."""
    from sqlalchemy import select

    from hub.db import Database
    from hub.models import Adapter, User

    db = Database(url)
    with db.session() as session:
        public = session.execute(select(User.name, Adapter.name).join(Adapter.owner)
                                 .where(Adapter.visibility == "public")
                                 .order_by(Adapter.id).limit(5000)).all()
    db.dispose()
    rng = random.Random(7)
    details = [f"/api/v1/adapters/{owner}/{name}" for owner, name in public]
    return {
        "health": "/api/v1/health",
        "list (downloads)": "/api/v1/adapters",
        "sort=name": "/api/v1/adapters?sort=name",
        "sort=created": "/api/v1/adapters?sort=created",
        f"search={COMMON} (common)": f"/api/v1/adapters?search={COMMON}",
        f"search={RARE} (rare)": f"/api/v1/adapters?search={RARE}",
        "search=zzyzx (no match)": "/api/v1/adapters?search=zzyzx",
        f"search={PREFIX} (prefix)": f"/api/v1/adapters?search={PREFIX}",
        "search=python sql (2 words)": "/api/v1/adapters?search=" + quote("python sql"),
        "tag=lora": "/api/v1/adapters?tag=lora",
        "base_model=mistralai/...": "/api/v1/adapters?base_model="
                                    + quote("MISTRALAI/mistral-7b-v0.1", safe=""),
        "50 pages (next_cursor)": "PAGES",
        "adapter detail": lambda: rng.choice(details),
    }


class Client:
    """One keep-alive HTTP connection; `get` returns the seconds a request took."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cursor: str | None = None
        self.pages = 0

    def get(self, path: str) -> float:
        if path == "PAGES":
            path = self._next_page()
        began = time.perf_counter()
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        took = time.perf_counter() - began
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        if self._paging:
            self.cursor = json.loads(body)["next_cursor"]
        return took

    _paging = False

    def _next_page(self) -> str:
        self._paging = True
        if self.pages >= 50 or (self.pages and self.cursor is None):
            self.pages, self.cursor = 0, None
        self.pages += 1
        return "/api/v1/adapters" + (f"?cursor={self.cursor}" if self.cursor else "")

    def close(self) -> None:
        self.connection.close()


def measure(port: int, target, clients: int, seconds: float) -> dict:
    """Latencies and throughput of `target` with `clients` concurrent clients."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def run() -> None:
        client = Client(port)
        mine = []
        try:
            client.get(target() if callable(target) else target)  # warm the connection
            while time.perf_counter() < stop:
                mine.append(client.get(target() if callable(target) else target))
        except BaseException as exc:  # reported after the threads join
            errors.append(exc)
        finally:
            client.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {"n": len(latencies), "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
            "rps": len(latencies) / wall}


def serve(url: str, data_dir: Path, children: Children, workers: int,
          cache_seconds: int | None) -> tuple[int, object]:
    """Start `lorastack serve` on `url`; return its port and process."""
    port = free_port()
    env = child_env(LORASTACK_DATABASE_URL=url, LORASTACK_DATA_DIR=str(data_dir),
                    LORASTACK_SECRET_KEY="bench", PYTHONPATH=str(ROOT))
    if cache_seconds is not None:
        env["LORASTACK_CATALOG_CACHE_SECONDS"] = str(cache_seconds)
    log = data_dir / f"serve-{port}.log"
    proc = children.start([venv_script("lorastack"), "serve", "--port", str(port),
                           "--workers", str(workers)], env, log)
    wait_http(f"http://127.0.0.1:{port}/api/v1/health", proc, log, timeout=120)
    return port, proc


#: The server's listing cache in each measured run: its default, and off (every listing
#: computed, as the first request for a page after a catalog write is).
CACHE_MODES = {"on": None, "off": 0}


def run_backend(backend: str, adapters: int, seconds: float, workdir: Path,
                workers: int, caches: tuple[str, ...]) -> list[str]:
    """Fill, serve and measure one backend; the tables' lines."""
    from sqlalchemy import create_engine, text

    data_dir = workdir / backend
    data_dir.mkdir(parents=True)
    admin = None
    if backend == "postgres":
        database = f"lorastack_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{database}"
    else:
        url = f"sqlite:///{data_dir / 'hub.db'}"
    children = Children()
    try:
        began = time.perf_counter()
        fill(url, adapters)
        print(f"{backend}: filled {adapters} adapters in {time.perf_counter() - began:.0f} s")
        lines: list[str] = []
        for cache in caches:
            port, proc = serve(url, data_dir, children, workers, CACHE_MODES[cache])
            lines += measure_server(port, url, seconds,
                                    f"### {backend}, {adapters} adapters (`lorastack serve"
                                    f" --workers {workers}`, listing cache {cache})")
            children.stop(proc)
        return lines
    finally:
        children.close()
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            admin.dispose()


def measure_server(port: int, url: str, seconds: float, title: str) -> list[str]:
    """Each query type with 1 and 16 clients against one server; the table's lines."""
    lines = [title, "",
             "| query | 1 client p50 / p95 / p99 ms | 1 client req/s |"
             " 16 clients p50 / p95 / p99 ms | 16 clients req/s | 16c req/s vs health |",
             "|---|---|---|---|---|---|"]
    print(title, flush=True)
    health_rps = None
    for label, target in queries(url).items():
        one = measure(port, target, 1, seconds)
        many = measure(port, target, 16, seconds)
        health_rps = health_rps or many["rps"]
        line = (f"| {label} | {one['p50']:.1f} / {one['p95']:.1f} / {one['p99']:.1f} |"
                f" {one['rps']:.0f} | {many['p50']:.0f} / {many['p95']:.0f} /"
                f" {many['p99']:.0f} | {many['rps']:.0f} |"
                f" {many['rps'] / health_rps:.2f} |")
        print(line, flush=True)
        lines.append(line)
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="How long each query type runs, per client count.")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="web processes of lorastack serve (default: its own, one a core)")
    parser.add_argument("--cache", choices=("on", "off", "both"), default="both",
                        help="the server's listing cache: its default (on), off, or a run"
                             " of each")
    args = parser.parse_args()
    caches = ("on", "off") if args.cache == "both" else (args.cache,)
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="lorastack-catalog-", dir=args.workdir) as tmp:
        tables = [run_backend(backend, args.adapters, args.seconds, Path(tmp), args.workers,
                              caches)
                  for backend in backends]
    load = os.getloadavg()[0]
    print()
    for table in tables:
        print("\n".join(table) + "\n")
    print(f"load average after the run: {load:.1f} (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
