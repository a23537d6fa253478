"""A wheel built from the tree is a working install: `lorastack db upgrade` finds its migrations."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_migrations(tmp_path: Path):
    # Built from a copy, so setuptools' build/ folder never lands in the checkout.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "hub", tree / "hub", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(tree)], check=True)
    wheel = next((tmp_path / "dist").glob("lorastack-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "hub/migrations/env.py" in names and "hub/migrations/script.py.mako" in names
    assert any(n.startswith("hub/migrations/versions/") and n.endswith(".py") for n in names)

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
