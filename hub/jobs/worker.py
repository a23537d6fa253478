"""`lorastack worker`: a Celery worker process that runs one merge at a time on one device."""
from __future__ import annotations

import logging
import os
import socket

from hub.config import Settings
from hub.jobs.celery_queue import QUEUE, TASK, Sweeper, make_celery
from hub.runtime import open_hub
from hub.services.merge_run import MergeRunner

log = logging.getLogger("hub.jobs.worker")


def run_worker(settings: Settings, device: str | None = None, name: str | None = None) -> None:
    """Start the worker: the solo pool (one merge at a time, in this process), the sweep
    thread beside it; returns when Celery stops."""
    device = device or settings.device
    if device.startswith("cuda:"):
        import torch

        # This process is the worker's own: its current device is the one it was given.
        torch.cuda.set_device(int(device.split(":", 1)[1]))
    hub = open_hub(settings)
    name = name or f"lorastack-{device}@{socket.gethostname()}-{os.getpid()}"
    runner = MergeRunner(hub, name, device)
    app = make_celery(settings)

    @app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)
    def run_merge(merge_id: str) -> None:
        status = runner.run(merge_id)
        log.info("merge %s: %s", merge_id, status or "not ours (claimed, cancelled or done)")

    sweeper = Sweeper(app, hub)
    sweeper.start()
    try:
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", "-Q", QUEUE,
                         "-n", name, "--loglevel=INFO", "--without-gossip", "--without-mingle"])
    finally:
        sweeper.stop()
        hub.db.dispose()
