"""Merges on real workers: `lorastack worker` processes fed by a private Redis, killed in
the middle of a merge, a broker that is down at submit, cancellation, and the inline queue
across a restart of `lorastack serve`.

The web side is the app in this process (Flask's test client) on the same database and
blob store as the workers. Deadlines below only keep a broken run from hanging; nothing
asserts how long anything takes.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest
import requests

from tests.conftest import need_service
from tests.e2e.helpers import auth, fetch, publish
from tests.e2e.merge_stack import (DEADLINE_S, PROCESS_ENV, TIMES, Stack, assert_mid_merge,
                                   ended, file_rows, progressed, wait_for)
from tests.support.processes import REDIS_SERVER, HubProcess, RedisServer, hub_env
from tests.support.tiny_models import tiny_llama

pytestmark = pytest.mark.slow

# A merge that takes seconds on a CPU: every projection of a wider LLaMA at rank 64,
# merged densely (ties, no target rank) one module at a time.
SLOW_MODEL = dict(hidden_size=768, intermediate_size=1536, num_hidden_layers=2)
SLOW_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def fast_spec() -> dict:
    return {"sources": [{"adapter": "alice/a", "version": "1", "weight": 0.7},
                        {"adapter": "alice/b", "version": "1", "weight": 0.3}]}


def slow_spec(weight: float = 0.5) -> dict:
    return {"sources": [{"adapter": "alice/big-a", "version": "1", "weight": weight},
                        {"adapter": "alice/big-b", "version": "1", "weight": 0.5}],
            "method": "ties", "density": 0.2}


@pytest.fixture(scope="session")
def slow_loras(tmp_path_factory) -> tuple[Path, Path]:
    """Two adapters on every projection of a wider LLaMA: merging them takes seconds."""
    from tests.support.adapters import BASE_MODEL, save_peft_lora

    root = tmp_path_factory.mktemp("slow-loras")
    return tuple(save_peft_lora(root / f"s{seed}", tiny_llama(0, **SLOW_MODEL), seed=seed,
                                base_name=BASE_MODEL, r=64, lora_alpha=64,
                                target_modules=list(SLOW_MODULES))
                 for seed in (1, 2))


@pytest.fixture
def broker(tmp_path) -> RedisServer:
    """A private redis-server (never the machine's own): tests stop and start it."""
    if not os.access(REDIS_SERVER, os.X_OK):
        need_service("redis-server", FileNotFoundError(REDIS_SERVER))
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def celery_settings(settings, broker):
    return settings.with_overrides(queue="celery", broker_url=broker.url, **TIMES)


@pytest.fixture
def stack(celery_settings, tmp_path) -> Stack:
    stack = Stack(celery_settings, tmp_path)
    yield stack
    stack.close()


@pytest.fixture
def token(stack) -> str:
    from hub.services.accounts import create_token, create_user

    with stack.hub.db.session() as session:
        create_user(session, "alice")
        return create_token(session, "alice", scope="write")


@pytest.fixture
def fast_adapters(stack, token, lora_dir, other_lora_dir) -> str:
    for name, folder in (("alice/a", lora_dir), ("alice/b", other_lora_dir)):
        assert publish(stack.client, token, name, "1", folder).status_code == 201
    return token


@pytest.fixture
def slow_adapters(stack, token, slow_loras) -> str:
    for name, folder in zip(("alice/big-a", "alice/big-b"), slow_loras):
        assert publish(stack.client, token, name, "1", folder).status_code == 201
    return token


def submit(stack: Stack, token: str, body: dict) -> str:
    response = stack.client.post("/api/v1/merges", headers=auth(token), json=body)
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["id"]


def assert_downloads_an_adapter(stack: Stack, token: str, done: dict, folder: Path,
                                base) -> None:
    """The archive is the merge's, unzips to its files, and PEFT loads them onto `base`."""
    import warnings

    from peft import PeftModel
    from safetensors.torch import load_file

    status, archive, _ = fetch(stack.client, f"/api/v1/merges/{done['id']}/archive", token)
    assert status == 200
    assert hashlib.sha256(archive).hexdigest() == done["archive"]["sha256"]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        zf.extractall(folder)
    for file in done["files"]:
        assert hashlib.sha256((folder / file["path"]).read_bytes()).hexdigest() == file["sha256"]
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert tensors and all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PeftModel.from_pretrained(base, str(folder))


def test_a_worker_process_runs_a_merge_sent_through_redis(stack, fast_adapters, tmp_path):
    token = fast_adapters
    stack.start_worker("w1")
    merge_id = submit(stack, token, fast_spec())
    done = stack.wait_ended(token, merge_id)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1 and done["device"] == "cpu" and done["error"] is None
    assert stack.file_rows(merge_id) == len(done["files"]) == 4
    assert_downloads_an_adapter(stack, token, done, tmp_path / "merged", tiny_llama(0))
    # The same id sent again (a redelivery): the worker finds it done and leaves it.
    stack.hub.queue.submit(merge_id)
    stack.workers["w1"].wait_for_log(f"merge {merge_id}: not ours")
    again = stack.merge(token, merge_id)
    assert again["attempts"] == 1 and again["files"] == done["files"]
    assert stack.file_rows(merge_id) == 4


def test_a_merge_whose_worker_is_killed_finishes_once_on_another_worker(stack, slow_adapters,
                                                                         tmp_path):
    token = slow_adapters
    stack.start_workers("w1", "w2")
    merge_id = submit(stack, token, slow_spec())
    stack.wait_mid_merge(token, merge_id)
    first = stack.holder(merge_id)
    stack.workers[first].kill()
    done = stack.wait_ended(token, merge_id)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["error"] is None
    second = ({"w1", "w2"} - {first}).pop()
    assert stack.holder(merge_id) == second
    assert stack.file_rows(merge_id) == len(done["files"]) == 4
    # Nothing of either attempt is left where the second ran (on SQLite + local files
    # the killed worker's folder is there too: the workers share one data dir).
    assert list((stack.worker_data_dir(second) / "tmp").iterdir()) == []
    assert_downloads_an_adapter(stack, token, done, tmp_path / "merged",
                                tiny_llama(0, **SLOW_MODEL))


def test_a_merge_whose_last_attempt_is_killed_fails_with_worker_lost(stack, slow_adapters):
    token = slow_adapters
    stack.start_worker("w1", LORASTACK_MERGE_ATTEMPTS="1")
    merge_id = submit(stack, token, slow_spec())
    stack.wait_mid_merge(token, merge_id)
    stack.workers["w1"].kill()
    # The worker comes back (as a supervisor would start it): its sweep finds the merge.
    stack.start_worker("w1", LORASTACK_MERGE_ATTEMPTS="1")
    done = stack.wait_ended(token, merge_id)
    assert done["status"] == "failed" and done["error"]["code"] == "worker_lost", done
    assert done["attempts"] == 1 and done["files"] == []
    assert stack.file_rows(merge_id) == 0


def test_a_merge_requested_while_redis_is_down_is_sent_once_it_is_back(stack, broker,
                                                                       fast_adapters):
    from hub.models import Merge

    token = fast_adapters
    broker.stop()
    answer: dict = {}
    post = threading.Thread(target=lambda: answer.update(response=stack.client.post(
        "/api/v1/merges", headers=auth(token), json=fast_spec())), daemon=True)
    post.start()
    post.join(10)
    assert not post.is_alive(), "POST /merges hung while the broker was down"
    response = answer["response"]
    assert response.status_code == 202, response.get_data(as_text=True)
    merge_id = response.get_json()["id"]
    with stack.hub.db.session() as session:
        row = session.get(Merge, merge_id)
        assert row.status == "queued" and row.enqueued_at is None
    broker.start()
    stack.start_worker("w1")
    done = stack.wait_ended(token, merge_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert stack.file_rows(merge_id) == 4
    with stack.hub.db.session() as session:
        assert session.get(Merge, merge_id).enqueued_at is not None


def test_cancel_ends_a_queued_merge_at_once_and_a_running_one_between_modules(stack,
                                                                               slow_adapters):
    token = slow_adapters
    running_id = submit(stack, token, slow_spec(0.5))
    queued_id = submit(stack, token, slow_spec(0.25))
    # No worker yet: the queued merge is cancelled by the request itself.
    cancelled = stack.client.delete(f"/api/v1/merges/{queued_id}", headers=auth(token))
    body = cancelled.get_json()
    assert body["status"] == "cancelled" and body["error"]["code"] == "merge_cancelled"

    worker = stack.start_worker("w1")
    stack.wait_mid_merge(token, running_id)
    asked = stack.client.delete(f"/api/v1/merges/{running_id}", headers=auth(token)).get_json()
    assert asked["cancel_requested"] is True
    done = stack.wait_ended(token, running_id)
    assert done["status"] == "cancelled" and done["error"]["code"] == "merge_cancelled", done
    assert done["files"] == [] and stack.file_rows(running_id) == 0
    assert list((stack.worker_data_dir("w1") / "tmp").iterdir()) == []
    # The cancelled merge's message reaches the worker after the other: it is not run.
    worker.wait_for_log(f"merge {queued_id}: not ours")
    assert stack.merge(token, queued_id)["attempts"] == 0


def test_a_redelivered_merge_id_never_runs_a_claimed_merge_twice(app, client, make_user,
                                                                  lora_dir, other_lora_dir):
    from hub.services.merge_run import MergeRunner

    hub = app.extensions["lorastack"]
    hub.queue.close()  # the runners below are the only workers
    token = make_user("alice")
    for name, folder in (("alice/a", lora_dir), ("alice/b", other_lora_dir)):
        assert publish(client, token, name, "1", folder).status_code == 201
    merge_id = client.post("/api/v1/merges", headers=auth(token),
                           json=fast_spec()).get_json()["id"]
    # Two deliveries of the same id at once, on two workers, then a late third one.
    runners = [MergeRunner(hub, f"w{n}") for n in (1, 2)]
    results: list = []
    threads = [threading.Thread(target=lambda r=r: results.append(r.run(merge_id)))
               for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert sorted(results, key=str) == [None, "succeeded"]
    assert runners[0].run(merge_id) is None
    done = client.get(f"/api/v1/merges/{merge_id}", headers=auth(token)).get_json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert file_rows(hub, merge_id) == 4


def test_an_inline_merge_cut_off_by_a_server_kill_runs_again_after_a_restart(settings,
                                                                             slow_loras,
                                                                             tmp_path):
    from hub import create_app
    from hub.services.accounts import create_token, create_user
    from tests.support.moto_server import free_port

    inline = settings.with_overrides(queue="inline", **TIMES)
    # The adapters are published by an app in this process, closed before the server runs.
    app = create_app(inline)
    hub = app.extensions["lorastack"]
    with hub.db.session() as session:
        create_user(session, "alice")
        token = create_token(session, "alice", scope="write")
    for name, folder in zip(("alice/big-a", "alice/big-b"), slow_loras):
        assert publish(app.test_client(), token, name, "1", folder).status_code == 201
    hub.close()

    base = f"http://127.0.0.1:{free_port()}"
    env = hub_env(inline, PORT=base.rsplit(":", 1)[1], **PROCESS_ENV)

    servers: list[HubProcess] = []

    def serve() -> HubProcess:
        servers.append(HubProcess(["serve"], env, tmp_path / f"serve-{len(servers)}.log"))
        servers[-1].wait_for_log("Booting worker")
        wait_for(lambda: _health(base), bool, "served", servers[-1].log)
        return servers[-1]

    def read() -> dict:
        got = requests.get(f"{base}/api/v1/merges/{merge_id}", headers=auth(token), timeout=10)
        assert got.status_code == 200, got.text
        return got.json()

    try:
        first = serve()
        response = requests.post(f"{base}/api/v1/merges", headers=auth(token),
                                 json=slow_spec(), timeout=30)
        assert response.status_code == 202, response.text
        merge_id = response.json()["id"]
        assert_mid_merge(wait_for(read, progressed, "made progress", first.log))
        first.kill()
        done = wait_for(read, ended, "ended", serve().log)
    finally:
        for server in servers:
            server.kill()
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert len(done["files"]) == file_rows(hub, merge_id) == 4
    assert list((settings.data_dir / "tmp").iterdir()) == []


def _health(base: str) -> bool:
    try:
        return requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
