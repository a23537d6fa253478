"""Real processes for the job tests: a private redis-server, `lorastack worker` and
`lorastack serve` subprocesses that share a test's database and blob store.

Every process gets its own session (process group), logs to a file (a full pipe would
block it) and is killed by its owner; nothing here touches a Redis the machine runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hub
from tests.support.moto_server import MOTO_ENV, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
#: The tree whose `hub` the tests import: subprocesses must run that same code.
SOURCE_ROOT = Path(hub.__file__).resolve().parent.parent
_START_TIMEOUT_S = 60


class RedisServer:
    """A redis-server on a free port, in memory only, that a test can stop and start."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it (on the same port each time) and wait until it answers PING."""
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start:\n" + self.log()) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """Stop it; what it held is gone (nothing is saved)."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def hub_env(settings, **extra: str) -> dict[str, str]:
    """The environment of a hub process on `settings`: the same database and store, the
    tested source tree first on the path, no LORASTACK_* of the caller's own."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LORASTACK_") and key != "PORT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT),
                                                      os.environ.get("PYTHONPATH")]))
    env.update({"LORASTACK_DATA_DIR": str(settings.data_dir),
                "LORASTACK_DATABASE_URL": settings.database_url,
                "LORASTACK_STORAGE_URL": settings.storage_url,
                "LORASTACK_QUEUE": settings.queue,
                "LORASTACK_SECRET_KEY": settings.secret_key or "test",
                "LORASTACK_DEVICE": "cpu",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if settings.broker_url:
        env["LORASTACK_BROKER_URL"] = settings.broker_url
    if settings.s3_endpoint_url:
        env["LORASTACK_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        env.update(MOTO_ENV)
    env.update(extra)
    return env


class HubProcess:
    """One `lorastack ...` subprocess, its output in `log_path`."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        lorastack = Path(sys.executable).parent / "lorastack"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([str(lorastack), *args], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = _START_TIMEOUT_S) -> None:
        """Wait until the output shows `text`; fail with the output if the process dies."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"lorastack {self.args[0]} exited "
                                     f"({self.proc.returncode}):\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from lorastack {self.args[0]}:\n"
                                     + self.log()[-4000:])
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group: no handler, no cleanup, as a crash would."""
        stop_process(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        """Ask it to stop (SIGTERM), killing it if it does not."""
        stop_process(self.proc, signal.SIGTERM)


def stop_process(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process's group and reap it (SIGKILL after a grace period)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
    else:
        proc.wait()
