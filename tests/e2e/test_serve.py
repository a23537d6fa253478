"""`lorastack serve` (what `make run` starts) migrates and serves on the embedded default."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.moto_server import free_port


def test_serve_starts_gunicorn_on_a_fresh_data_dir(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "LORASTACK_DATA_DIR": str(tmp_path / "var"), "PORT": str(port)}
    env.pop("LORASTACK_DATABASE_URL", None)
    env.pop("LORASTACK_STORAGE_URL", None)
    lorastack = Path(sys.executable).parent / "lorastack"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(lorastack), "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        response = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        output = (tmp_path / "serve.log").read_text(errors="replace")
        assert response is not None, output
        assert response.status_code == 200 and response.json()["status"] == "ok"
        assert (tmp_path / "var" / "hub.db").exists() and (tmp_path / "var" / "secret_key").exists()
        assert "gunicorn" in output.lower() or "Booting worker" in output, output
        missing = requests.get(f"http://127.0.0.1:{port}/api/v1/adapters/a/b", timeout=5,
                               headers={"X-Request-ID": "probe-123"})
        assert missing.status_code == 404
        assert missing.headers["Content-Type"] == "application/problem+json"
        assert missing.headers["X-Request-ID"] == "probe-123"
        deadline = time.monotonic() + 10
        while "id=probe-123" not in (tmp_path / "serve.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, "no access log line with the request id"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
