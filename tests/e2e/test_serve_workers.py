"""`lorastack serve --workers N` with the inline queue: every process takes requests, exactly
one (the holder of the data folder's lock) runs the merges, and a merge requested through
any of them starts at once."""
from __future__ import annotations

import os
import time

import psutil
import pytest
import requests
from sqlalchemy import select

from tests.e2e.helpers import auth, publish
from tests.support.moto_server import free_port
from tests.support.processes import HubProcess, hub_env

pytestmark = pytest.mark.slow
WORKERS = 3


def _merge_ended(base: str, token: str, merge_id: str, within: float) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = requests.get(f"{base}/api/v1/merges/{merge_id}", headers=auth(token),
                            timeout=10).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"merge {merge_id} still {body['status']} after {within} s")


def test_several_web_processes_share_requests_and_one_runs_the_merges(settings, lora_dir,
                                                                      other_lora_dir,
                                                                      tmp_path):
    from hub import create_app
    from hub.db import Database
    from hub.models import Merge
    from hub.services.accounts import create_token, create_user

    # A long sweep: a merge may only start quickly because the merging process polls.
    inline = settings.with_overrides(queue="inline", sweep_seconds=120.0)
    app = create_app(inline)
    hub = app.extensions["lorastack"]
    with hub.db.session() as session:
        create_user(session, "alice")
        token = create_token(session, "alice", scope="write")
    for name, folder in (("alice/a", lora_dir), ("alice/b", other_lora_dir)):
        assert publish(app.test_client(), token, name, "1", folder).status_code == 201
    hub.close()  # its own inline worker must not be the one that takes the lock

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = HubProcess(["serve", "--workers", str(WORKERS)],
                        hub_env(inline, PORT=str(port), LORASTACK_SWEEP_SECONDS="120"),
                        tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not up yet, or slow to answer at first
                pass
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
            time.sleep(0.2)
        children = psutil.Process(server.proc.pid).children()
        assert len(children) == WORKERS, server.log()
        ids = []
        for weight in (0.1, 0.2, 0.3, 0.4, 0.5):  # one at a time: each may reach any process
            spec = {"sources": [{"adapter": "alice/a", "version": "1", "weight": weight},
                                {"adapter": "alice/b", "version": "1", "weight": 0.5}]}
            response = requests.post(f"{base}/api/v1/merges", headers=auth(token), json=spec,
                                     timeout=30)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            done = _merge_ended(base, token, ids[-1], within=45)
            assert done["status"] == "succeeded", (done, server.log()[-3000:])
        lock = os.path.realpath(inline.data_dir / "inline-worker.lock")
        holders = [child.pid for child in children
                   if any(os.path.realpath(f.path) == lock for f in child.open_files())]
        assert len(holders) == 1, holders
        db = Database(inline.database_url)
        with db.session() as session:
            workers = set(session.scalars(select(Merge.worker).where(Merge.id.in_(ids))))
        db.dispose()
        assert {name.split(":")[2] for name in workers} == {str(holders[0])}, workers
    finally:
        server.stop()
