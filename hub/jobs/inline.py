"""The inline queue: one worker thread in the web process, the database as the queue.

It runs queued merges oldest first, one at a time, and sweeps for merges whose worker
went silent: a merge that was running when the process died runs again after a restart,
once its heartbeat is older than LORASTACK_STALE_SECONDS. Of several web processes on one
data folder (`lorastack serve --workers N`), one runs merges at a time: the one holding
the folder's inline-worker lock, so merges never share the device.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
import uuid

from sqlalchemy import select

from hub.errors import HubError
from hub.models import Merge
from hub.runtime import Hub
from hub.services.merge_run import MergeRunner
from hub.services.merge_sweep import mark_sent, sweep_stale

log = logging.getLogger("hub.jobs.inline")
#: How often the process that runs merges looks for queued ones: a merge requested through
#: another web process wakes that process's thread, not this one.
POLL_SECONDS = 1.0


class InlineQueue:
    """A daemon thread that runs this hub's queued merges."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        name = f"inline:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.runner = MergeRunner(hub, name)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock_file = None
        self._thread = threading.Thread(target=self._loop, name="lorastack-inline-worker",
                                        daemon=True)
        self._thread.start()

    def submit(self, merge_id: str) -> None:
        """Wake the worker thread; it finds the merge in the database."""
        with self.hub.db.session() as session:
            mark_sent(session, merge_id)
        self._wake.set()

    def close(self) -> None:
        """Stop the thread after the merge it is running, if any."""
        self._stop.set()
        self._wake.set()
        self._thread.join(30)
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file lets the lock go
            self._lock_file = None

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    with self.hub.db.session() as session:
                        sweep_stale(session, self.hub.settings)
                    next_sweep = time.monotonic() + self.hub.settings.sweep_seconds
                merge_id = self._next() if self._runs_merges() else None
                if merge_id is not None:
                    self.runner.run(merge_id)
                    continue
            except HubError as error:  # the database is away: try again after a pause
                log.warning("inline worker: %s", error.detail)
            except Exception:
                log.exception("inline worker")
            idle = self.hub.settings.sweep_seconds
            self._wake.wait(min(idle, POLL_SECONDS) if self._lock_file is not None else idle)
            self._wake.clear()

    def _runs_merges(self) -> bool:
        """Whether this process holds the data folder's inline-worker lock (taken once)."""
        if self._lock_file is None:
            handle = open(self.hub.settings.data_dir / "inline-worker.lock", "a+b")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._lock_file = handle
        return True

    def _next(self) -> str | None:
        with self.hub.db.session() as session:
            return session.scalar(select(Merge.id).where(Merge.status == "queued")
                                  .order_by(Merge.created_at, Merge.id).limit(1))
