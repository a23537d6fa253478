"""A wheel built from the tree is a working install: its migrations apply and its server
serves the static files, both carried from the top-level folders into the package."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import requests

from tests.support.moto_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_migrations(tmp_path: Path):
    # Built from a copy, so setuptools' build/ folder never lands in the checkout.
    tree = tmp_path / "tree"
    for folder in ("hub", "migrations", "static"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(tree)], check=True)
    wheel = next((tmp_path / "dist").glob("lorastack-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "hub/migrations/env.py" in names and "hub/migrations/script.py.mako" in names
    assert any(n.startswith("hub/migrations/versions/") and n.endswith(".py") for n in names)
    # pyproject lists the packages by hand (discovery cannot see mapped folders): every
    # module and every static file of the tree must be in the wheel.
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hub").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    expected |= {"hub/" + p.relative_to(ROOT).as_posix() for folder in ("migrations", "static")
                 for p in (ROOT / folder).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert expected - set(names) == set()

    # The unpacked wheel first on the path, run away from the checkout: its hub, not ours.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    db = tmp_path / "hub.db"
    env = {**os.environ, "PYTHONPATH": str(site), "LORASTACK_DATABASE_URL": f"sqlite:///{db}",
           "LORASTACK_DATA_DIR": str(tmp_path / "var")}
    code = ("import sys, hub; assert hub.__file__.startswith(sys.argv[1]), hub.__file__; "
            "from hub.cli import main; main(['db', 'upgrade'])")
    result = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "database at head" in result.stdout
    tables = {row[0] for row in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "adapters", "versions", "version_files", "alembic_version"} <= tables

    # The installed wheel's own server serves a static file from hub/static.
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [sys.executable, "-c", "from hub.cli import main; main(['serve', '--port', '%d'])" % port],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        static = sorted(p for p in (ROOT / "static").rglob("*") if p.is_file())[0]
        url = f"http://127.0.0.1:{port}/static/{static.relative_to(ROOT / 'static').as_posix()}"
        deadline = time.monotonic() + 60
        response = None
        while response is None and time.monotonic() < deadline and serve.poll() is None:
            try:
                response = requests.get(url, timeout=5)
            except requests.ConnectionError:
                time.sleep(0.2)
        assert response is not None, (tmp_path / "serve.log").read_text(errors="replace")
        assert response.status_code == 200 and response.content == static.read_bytes()
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
        log.close()
