"""/metrics on merges: counts by status, queue depth, heartbeat age and recent run times,
read from the database at scrape time."""
from __future__ import annotations

from datetime import datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from hub.errors import DatabaseUnavailable
from hub.models import Merge, utcnow
from tests.e2e.helpers import auth, publish
from tests.e2e.test_merge_service import spec, wait


def scrape(client) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def merge_series(samples: dict) -> dict:
    return {key: value for key, value in samples.items()
            if key[0].startswith(("lorastack_merge", "lorastack_metrics"))}


def test_metrics_after_a_merge_show_its_status_and_run_time(client, make_user, lora_dir):
    token = make_user("alice")
    assert publish(client, token, "alice/a", "1.0", lora_dir).status_code == 201
    body = spec(("alice/a", "1.0", 0.5), rank=2)
    merge = client.post("/api/v1/merges", headers=auth(token), json=body).get_json()
    done = wait(client, token, merge["id"])
    assert done["status"] == "succeeded"
    bob = make_user("bob")  # a cache hit: succeeded too, but never run
    assert client.post("/api/v1/merges", headers=auth(bob), json=body).status_code == 202

    samples = scrape(client)
    ran = (datetime.fromisoformat(done["finished_at"])
           - datetime.fromisoformat(done["started_at"])).total_seconds()
    assert merge_series(samples) == {
        ("lorastack_metrics_database_up", ()): 1.0,
        **{("lorastack_merges", (("status", status),)): count for status, count in
           [("queued", 0), ("running", 0), ("succeeded", 2), ("failed", 0), ("cancelled", 0)]},
        ("lorastack_merge_queue_depth", ()): 0.0,
        ("lorastack_merge_oldest_heartbeat_age_seconds", ()): 0.0,
        **{("lorastack_merges_finished_last_hour", (("status", status),)): count
           for status, count in [("succeeded", 1), ("failed", 0), ("cancelled", 0)]},
        ("lorastack_merge_duration_last_hour_seconds", (("quantile", "0.5"),)):
            samples[("lorastack_merge_duration_last_hour_seconds", (("quantile", "0.5"),))],
        ("lorastack_merge_duration_last_hour_seconds", (("quantile", "0.95"),)):
            samples[("lorastack_merge_duration_last_hour_seconds", (("quantile", "0.95"),))],
    }
    for q in ("0.5", "0.95"):  # one run: both quantiles are its time (ISO text: to 1 us)
        value = samples[("lorastack_merge_duration_last_hour_seconds", (("quantile", q),))]
        assert abs(value - ran) < 1e-5


def test_metrics_count_queued_merges_and_a_silent_running_one(app, client, make_user,
                                                               lora_dir):
    app.extensions["lorastack"].queue.close()  # no worker: merges stay queued
    token = make_user("alice")
    assert publish(client, token, "alice/a", "1.0", lora_dir).status_code == 201
    ids = [client.post("/api/v1/merges", headers=auth(token),
                       json=spec(("alice/a", "1.0", 1), rank=rank)).get_json()["id"]
           for rank in (1, 2, 3)]
    silent_since = utcnow() - timedelta(seconds=300)
    with app.extensions["lorastack"].db.session() as session:
        for merge_id, beat in ((ids[0], silent_since), (ids[1], utcnow())):
            session.execute(update(Merge).where(Merge.id == merge_id).values(
                status="running", worker="elsewhere", attempts=1, started_at=beat,
                heartbeat_at=beat))
    samples = scrape(client)
    assert samples[("lorastack_merge_queue_depth", ())] == 1.0
    assert samples[("lorastack_merges", (("status", "queued"),))] == 1.0
    assert samples[("lorastack_merges", (("status", "running"),))] == 2.0
    # The most silent running merge's age, not the freshest one's.
    assert samples[("lorastack_merge_oldest_heartbeat_age_seconds", ())] >= 300
    assert ("lorastack_merge_duration_last_hour_seconds", (("quantile", "0.5"),)) not in samples


def test_metrics_are_served_without_the_merge_series_when_the_database_is_down(
        app, client, monkeypatch):
    client.get("/api/v1/health")

    def unavailable():
        raise DatabaseUnavailable("The database is unavailable: connection refused")

    monkeypatch.setattr(app.extensions["lorastack"].db, "session", unavailable)
    samples = scrape(client)
    assert samples[("lorastack_metrics_database_up", ())] == 0.0
    assert not any(name.startswith("lorastack_merge") for name, _ in samples)
    assert any(name == "lorastack_http_requests_total" for name, _ in samples)
