"""Server time of the web pages with a large catalog on PostgreSQL: p50/p95 per page.

    python bench/web_pages.py [--adapters 10000] [--requests 200] [--keep]
    python bench/web_pages.py --database-url postgresql://... --data-dir DIR --reuse

Fills a fresh PostgreSQL database (127.0.0.1:5432, user postgres, or --admin-url) through
the services, as the API would: users, then `--adapters` adapters published with
publish_version (three real PEFT adapters of the tiny LLaMA, r = 4, 8 and 16, each with a
README card), spread over 100 owners, 6 licences, 5 base models, 40 tags and 4 tasks, 5%
private, with downloads recorded by record_download. Then times each page through the
Flask app in this process (the whole WSGI call: routing, queries, templates; no network)
after a warm-up, and prints p50/p95/max and the SQL statements one request runs.
The database is dropped at the end unless --keep.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench`, `hub` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LICENSES = ("apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "llama3.1", "openrail")
BASE_MODELS = ("meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "google/gemma-2-9b",
               "Qwen/Qwen2.5-7B", "tiny-llama-64")
TASKS = ("text-generation", "summarization", "translation", "question-answering")
TAGS = tuple(f"tag{i:02d}" for i in range(40))
WORDS = ("chat", "code", "math", "story", "legal", "medical", "poetry", "sql", "french",
         "japanese", "roleplay", "instruct", "reasoning", "summary", "support", "finance")
OWNERS = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database-url", default=None, help="use this database")
    parser.add_argument("--data-dir", default=None,
                        help="the blob store's folder (with --reuse: the kept one)")
    parser.add_argument("--reuse", action="store_true", help="it is filled already")
    parser.add_argument("--keep", action="store_true", help="keep the database and folder")
    args = parser.parse_args(argv)

    from sqlalchemy import create_engine, text

    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    url, created = args.database_url, False
    if url is None:
        name = f"lorastack_bench_web_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url, created = args.admin_url.rsplit("/", 1)[0] + f"/{name}", True
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="lorastack-bench-web-"))
    try:
        from hub import create_app
        from hub.config import Settings
        from hub.db import upgrade

        settings = Settings(data_dir=root / "data", secret_key="bench", database_url=url,
                            storage_url=f"file://{root / 'data' / 'blobs'}")
        upgrade(url)
        app = create_app(settings)
        if not args.reuse:
            fill(app, root, args.adapters)
        analyze(app.extensions["lorastack"])
        rows = measure(app, args.requests)
        app.extensions["lorastack"].close()
    finally:
        if created and not args.keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}"'
                                        " WITH (FORCE)"))
        elif created:
            print(f"kept {url} and {root}")
        if not args.keep and args.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
        admin.dispose()
    header = ["page", "p50 ms", "p95 ms", "max ms", "SQL/request"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    print(f"{args.adapters} adapters on PostgreSQL, local store; {args.requests} requests per"
          f" page after 10 warm-up; in-process WSGI time; 1-min load {os.getloadavg()[0]:.2f}")
    for line in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0


def _uploads(directory: Path):
    from hub.services.publish import Upload

    return [Upload(name=path.name, path=path, size=path.stat().st_size,
                   sha256=hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(directory.iterdir()) if path.is_file()]


def fill(app, root: Path, count: int) -> None:
    """Users and `count` adapters through the services, with downloads."""
    from hub.services import catalog
    from hub.services.accounts import Principal, create_user
    from hub.services.names import Metadata
    from hub.services.publish import LicenseChoice, publish_version
    from tests.support.adapters import save_lora

    hub = app.extensions["lorastack"]
    rng = random.Random(7)
    variants = []
    for index, rank in enumerate((4, 8, 16)):
        readme = (f"# Variant {index}\n\nA LoRA of rank {rank}.\n\n| key | value |\n|---|---|\n"
                  f"| r | {rank} |\n\n```python\nprint('hello')\n```\n")
        folder = save_lora(root / f"lora{index}", seed=index, r=rank, alpha=2 * rank,
                           readme=readme)
        variants.append(_uploads(folder))
    principals = {}
    with hub.db.session() as session:
        for index in range(OWNERS):
            user = create_user(session, f"user{index:03d}")
            principals[user.name] = Principal(user.id, user.name, False, ("read", "write"))
    started = time.perf_counter()
    ids = []
    for index in range(count):
        owner = f"user{index % OWNERS:03d}"
        words = rng.sample(WORDS, 2)
        metadata = Metadata(description=f"A {words[0]} adapter that is good at {words[1]}.",
                            tags=rng.sample(TAGS, 3), task=rng.choice(TASKS),
                            base_model=rng.choice(BASE_MODELS),
                            visibility="private" if rng.random() < 0.05 else "public")
        with hub.db.session() as session:
            result = publish_version(session, hub.store, principals[owner], owner,
                                     f"{words[0]}-{words[1]}-{index}", "1.0",
                                     variants[index % 3], LicenseChoice(rng.choice(LICENSES)),
                                     metadata)
            ids.append(result.adapter.id)
        if (index + 1) % 1000 == 0:
            analyze(hub)
            print(f"published {index + 1} in {time.perf_counter() - started:.0f}s", flush=True)
    with hub.db.session() as session:
        for adapter_id in rng.choices(ids, k=count):
            catalog.record_download(session, adapter_id)
    analyze(hub)


def analyze(hub) -> None:
    """Fresh planner statistics. Production PostgreSQL gets them from autovacuum; where it
    is off (as on the test machines), plans made on the empty tables would be kept."""
    from sqlalchemy import text

    with hub.db.engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()


def measure(app, requests: int) -> list[list[str]]:
    """p50/p95/max of each page, and its statement count."""
    from flask import g
    from sqlalchemy import event, select

    from hub.models import Adapter, User

    hub = app.extensions["lorastack"]
    with hub.db.session() as session:
        owner, name = session.execute(
            select(User.name, Adapter.name).join(Adapter, Adapter.owner_id == User.id)
            .where(Adapter.visibility == "public").order_by(Adapter.downloads.desc())
            .limit(1)).one()
        signed_in = session.scalar(select(User).where(User.name == owner))
    viewer = {"user": None}

    @app.before_request
    def _viewer():
        if viewer["user"] is not None:
            g.web_user = viewer["user"]

    client = app.test_client()
    first = client.get("/?sort=name")
    cursor = first.get_data(as_text=True).split("cursor=", 1)[1].split('"', 1)[0]
    pages = [
        ("/ (most downloaded)", "/", None),
        ("/?sort=updated", "/?sort=updated", None),
        ("/?search=legal", "/?search=legal", None),
        ("/?license=mit&tag=tag07", "/?license=mit&tag=tag07", None),
        ("/?base_model=...&sort=name", "/?base_model=Qwen/Qwen2.5-7B&sort=name", None),
        ("/?sort=name, page 2", f"/?sort=name&cursor={cursor}", None),
        ("/ signed in", "/", signed_in),
        ("/{owner}", f"/{owner}", None),
        ("/{owner}/{name}", f"/{owner}/{name}", None),
        ("/{owner}/{name}/v/1.0", f"/{owner}/{name}/v/1.0", None),
    ]
    statements = [0]

    def _count(*_args):
        statements[0] += 1

    event.listen(hub.db.engine, "before_cursor_execute", _count)
    rows = []
    for label, url, user in pages:
        viewer["user"] = user
        for _ in range(10):
            assert client.get(url).status_code == 200, url
        statements[0] = 0
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, url
        times.sort()
        rows.append([label, f"{statistics.median(times):.1f}",
                     f"{times[int(0.95 * len(times)) - 1]:.1f}", f"{times[-1]:.1f}",
                     f"{statements[0] / requests:.0f}"])
        print(" ".join(rows[-1]), flush=True)
    event.remove(hub.db.engine, "before_cursor_execute", _count)
    return rows


if __name__ == "__main__":
    sys.exit(main())
