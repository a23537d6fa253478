"""The Celery queue: merge ids through a broker (Redis) to `lorastack worker` processes.

Workers ack late, prefetch one message and give a message back when they die
(task_reject_on_worker_lost), so a merge is never lost with its worker; the claim on the
row (hub.services.merge_run) makes a redelivered message harmless. No result backend:
the row holds the result.
"""
from __future__ import annotations

import logging
import threading

from hub.config import Settings
from hub.errors import HubError
from hub.runtime import Hub
from hub.services.merge_sweep import MESSAGE_LOST_SECONDS, mark_sent, sweep_stale, unsent

log = logging.getLogger("hub.jobs.celery")
TASK = "lorastack.run_merge"
QUEUE = "lorastack-merges"


def make_celery(settings: Settings):
    """The Celery app for `settings.broker_url` (tasks are registered by the worker)."""
    from celery import Celery

    if not settings.broker_url:
        raise SystemExit("LORASTACK_QUEUE=celery needs LORASTACK_BROKER_URL (for example"
                         " redis://127.0.0.1:6379/0)")
    app = Celery("lorastack", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        # A submit must answer while the broker is down: fail fast, the sweep re-sends.
        broker_connection_timeout=2,
        broker_transport_options={"visibility_timeout": MESSAGE_LOST_SECONDS,
                                  "max_retries": 0},
        worker_hijack_root_logger=False,
        # The row, not the broker connection, says whether a merge should go on: a worker
        # that loses Redis for a moment finishes the merge it holds.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


class CeleryQueue:
    """Sends merge ids to the workers; a send that fails leaves the row for the sweep."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.app = make_celery(hub.settings)

    def submit(self, merge_id: str) -> None:
        """Send the id; on a broker error log it and leave the merge queued and unsent."""
        send(self.app, self.hub, merge_id)

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()


def send(app, hub: Hub, merge_id: str) -> bool:
    """Send one id and record it on the row; False when the broker refused."""
    try:
        app.send_task(TASK, args=[merge_id], retry=False)
    except Exception as error:  # kombu/redis connection errors: the broker is down
        log.warning("merge %s stays queued, not sent: the broker is unavailable (%s)",
                    merge_id, error)
        return False
    try:
        with hub.db.session() as session:
            mark_sent(session, merge_id)
    except HubError as error:
        log.warning("merge %s sent, but not recorded as sent: %s", merge_id, error.detail)
    return True


class Sweeper:
    """A worker's background thread: hands out silent merges again, sends unsent ones."""

    def __init__(self, app, hub: Hub) -> None:
        self.app = app
        self.hub = hub
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lorastack-sweep", daemon=True)

    def start(self) -> None:
        """Start sweeping every LORASTACK_SWEEP_SECONDS."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()
        self._thread.join(10)

    def sweep_once(self) -> None:
        """One pass: silent merges queued again, then every unsent queued merge sent."""
        with self.hub.db.session() as session:
            sweep_stale(session, self.hub.settings)
        with self.hub.db.session() as session:
            ids = unsent(session)
        for merge_id in ids:
            if not send(self.app, self.hub, merge_id):
                break

    def _loop(self) -> None:
        while True:
            try:
                self.sweep_once()
            except HubError as error:
                log.warning("sweep: %s", error.detail)
            except Exception:
                log.exception("sweep")
            if self._stop.wait(self.hub.settings.sweep_seconds):
                return
