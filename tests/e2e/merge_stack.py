"""The web app in this process, `lorastack worker` processes on its database and store,
and polling a merge until it gets somewhere (a deadline only keeps a broken run from
hanging: nothing here asserts how long anything takes)."""
from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.helpers import auth
from tests.support.processes import HubProcess, hub_env

# Short enough that a dead worker's merge is handed out again within seconds, long
# enough that a live worker on a busy machine is not taken for dead.
TIMES = {"heartbeat_seconds": 0.5, "stale_seconds": 4.0, "sweep_seconds": 1.0}
# One torch thread a process: the machine is shared, and a merge keeps a steady pace
# when it is busy (threads that spin for cores others hold make it many times slower).
PROCESS_ENV = {**{f"LORASTACK_{name.upper()}": str(value) for name, value in TIMES.items()},
               "OMP_NUM_THREADS": "1"}
DEADLINE_S = 180


def ended(body: dict) -> bool:
    return body["status"] not in ("queued", "running")


def progressed(body: dict) -> bool:
    return ended(body) or (body["status"] == "running" and body["progress"] > 0)


def assert_mid_merge(body: dict) -> dict:
    assert body["status"] == "running", f"the merge ended before it could be interrupted: {body}"
    return body


def wait_for(read, until, what: str, logs=lambda: "") -> dict:
    """Call `read()` until `until` holds for its answer; fail at the deadline with `logs()`."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        body = read()
        if until(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}: {body}\n{logs()}")
        time.sleep(0.1)


def file_rows(hub, merge_id: str) -> int:
    """How many result file rows the merge has in the database."""
    from sqlalchemy import func, select

    from hub.models import MergeFile

    with hub.db.session() as session:
        return session.scalar(select(func.count()).select_from(MergeFile)
                              .where(MergeFile.merge_id == merge_id))


class Stack:
    """The web app in this process and the worker processes around it."""

    def __init__(self, settings, tmp_path: Path) -> None:
        from hub import create_app

        self.settings = settings
        self.tmp_path = tmp_path
        self.app = create_app(settings)
        self.app.testing = True
        self.client = self.app.test_client()
        self.hub = self.app.extensions["lorastack"]
        self.workers: dict[str, HubProcess] = {}  # by name, the latest started
        self._processes: list[HubProcess] = []

    def worker_data_dir(self, name: str) -> Path:
        # On SQLite + local files a worker shares the web's data dir (the database and the
        # blobs are there); on PostgreSQL + S3 it has its own, as on another machine.
        if self.settings.storage_url.startswith("file://"):
            return self.settings.data_dir
        return self.tmp_path / f"worker-{name}"

    def start_worker(self, name: str, **env: str) -> HubProcess:
        """`lorastack worker --name NAME`, once Celery says it is ready."""
        return self.start_workers(name, **env)[0]

    def start_workers(self, *names: str, **env: str) -> list[HubProcess]:
        """Start the workers side by side, then wait until each is ready."""
        started = []
        for name in names:
            settings = self.settings.with_overrides(data_dir=self.worker_data_dir(name))
            log = self.tmp_path / f"worker-{name}-{len(self._processes)}.log"
            self.workers[name] = HubProcess(["worker", "--name", name],
                                            hub_env(settings, **{**PROCESS_ENV, **env}), log)
            self._processes.append(self.workers[name])
            started.append(self.workers[name])
        for process in started:
            process.wait_for_log(" ready.")
        return started

    def merge(self, token: str, merge_id: str) -> dict:
        response = self.client.get(f"/api/v1/merges/{merge_id}", headers=auth(token))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def wait(self, token: str, merge_id: str, until, what: str) -> dict:
        """Poll the merge until `until(body)`; fail with the workers' logs at the deadline."""
        return wait_for(lambda: self.merge(token, merge_id), until, f"merge {merge_id} {what}",
                        lambda: "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}"
                                          for p in self._processes))

    def wait_ended(self, token: str, merge_id: str) -> dict:
        return self.wait(token, merge_id, ended, "ended")

    def wait_mid_merge(self, token: str, merge_id: str) -> dict:
        """Wait until a worker has merged some modules (and said so in a heartbeat)."""
        return assert_mid_merge(self.wait(token, merge_id, progressed, "made progress"))

    def holder(self, merge_id: str) -> str | None:
        """The worker that holds (or last held) the merge's claim."""
        from hub.models import Merge

        with self.hub.db.session() as session:
            return session.get(Merge, merge_id).worker

    def file_rows(self, merge_id: str) -> int:
        return file_rows(self.hub, merge_id)

    def close(self) -> None:
        for process in self._processes:
            process.kill()
        self.hub.close()
