"""A real hub and a real browser for the page tests.

`start_hub` runs `lorastack serve` (gunicorn) on a fresh data folder (SQLite, local store)
with this tree's code first on PYTHONPATH; the `HubServer` it returns runs `lorastack`
commands with the same environment and publishes through the HTTP API, as a person's CLI
would. Pages are driven with Playwright on Debian's Chromium (Playwright's own browser
download does not work on these machines).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.moto_server import free_port
from tests.support.processes import SOURCE_ROOT, HubProcess

CHROMIUM = Path(os.environ.get("LORASTACK_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = SOURCE_ROOT / "test-artifacts"
_START_TIMEOUT_S = 60


@dataclass
class HubServer:
    """A running `lorastack serve`: its base URL, environment and data folder."""

    url: str
    env: dict[str, str]
    data_dir: Path
    process: HubProcess
    tokens: dict[str, str] = field(default_factory=dict)

    def lorastack(self, *args: str, input: str | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
        """Run `lorastack ARGS` against this hub (server commands share its database,
        client commands its URL); raises with the output when it fails and `check`."""
        lorastack = Path(sys.executable).parent / "lorastack"
        env = {**self.env, "LORASTACK_ENDPOINT": self.url}
        result = subprocess.run([str(lorastack), *args], env=env, input=input, text=True,
                                capture_output=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"lorastack {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def create_user(self, name: str, *args: str) -> str:
        """Create a user through the CLI and return its write token (kept in `tokens`)."""
        output = self.lorastack("users", "create", name, *args).stdout
        self.tokens[name] = output.strip().splitlines()[-1]
        return self.tokens[name]

    def publish(self, owner: str, ref: str, version: str, directory: Path, *,
                license: str = "apache-2.0", metadata: dict | None = None,
                files: dict[str, bytes] | None = None) -> dict:
        """Publish a version through the API with `owner`'s token; the Version JSON."""
        parts = {path.name: path.read_bytes() for path in sorted(directory.iterdir())
                 if path.is_file()}
        parts.update(files or {})
        data = {"version": version, "license": license}
        if metadata is not None:
            data["metadata"] = json.dumps(metadata)
        response = requests.post(
            f"{self.url}/api/v1/adapters/{ref}/versions", data=data, timeout=60,
            files=[("files", (name, content)) for name, content in parts.items()],
            headers={"Authorization": f"Bearer {self.tokens[owner]}"})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def api(self, method: str, path: str, owner: str | None = None, **kwargs):
        """A request to the API, as `owner` when given."""
        headers = kwargs.pop("headers", {})
        if owner is not None:
            headers["Authorization"] = f"Bearer {self.tokens[owner]}"
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60,
                                **kwargs)

    def stop(self) -> None:
        self.process.stop()


def start_hub(data_dir: Path, **extra_env: str) -> HubServer:
    """Start `lorastack serve` on a fresh SQLite data folder; wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LORASTACK_") and key != "PORT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT),
                                                      os.environ.get("PYTHONPATH")]))
    env.update({"LORASTACK_DATA_DIR": str(data_dir), "LORASTACK_SECRET_KEY": "browser-tests",
                "LORASTACK_DEVICE": "cpu", "PORT": str(port),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra_env})
    process = HubProcess(["serve"], env, data_dir / "serve.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.proc.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise AssertionError("lorastack serve did not start:\n" + process.log()[-4000:])
        time.sleep(0.2)
    return HubServer(url=url, env=env, data_dir=data_dir, process=process)


def screenshot(page, name: str) -> Path:
    """A full-page screenshot in test-artifacts/ (ignored by git), for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: Every visible form control and the accessible name a screen reader would announce: a
#: <label for>, a wrapping label, aria-label or aria-labelledby, or a button's own text.
UNLABELLED_CONTROLS_JS = """
() => Array.from(document.querySelectorAll('input, select, textarea, button'))
  .filter(el => el.type !== 'hidden')
  .filter(el => {
    const named = (el.labels && Array.from(el.labels).some(l => l.textContent.trim()))
      || (el.getAttribute('aria-label') || '').trim()
      || (el.getAttribute('aria-labelledby') || '').split(/\\s+/).some(id =>
           id && document.getElementById(id) && document.getElementById(id).textContent.trim())
      || (el.tagName === 'BUTTON' && el.textContent.trim())
      || (el.tagName === 'INPUT' && ['submit', 'button', 'reset'].includes(el.type) && el.value);
    return !named;
  })
  .map(el => el.outerHTML)
"""
