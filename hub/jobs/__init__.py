"""Queues that carry merge ids to workers: inline (a thread in the web process, the
embedded default) or Celery (workers elsewhere, through a broker such as Redis).

Whichever runs, the database row is the truth: a queue only says "look at merge X", and
hub.services.merge_run decides from the row whether there is anything to do.
"""
from __future__ import annotations

from typing import Protocol

from hub.runtime import Hub

QUEUES = ("inline", "celery")


class MergeQueue(Protocol):
    """Where a new merge's id goes; never raises for a queue that is down (the sweep
    sends what did not get through)."""

    def submit(self, merge_id: str) -> None:
        """Hand the id to a worker (best effort; the row stays queued either way)."""

    def close(self) -> None:
        """Stop what this process runs for the queue."""


def open_queue(hub: Hub) -> MergeQueue:
    """The queue that `hub.settings.queue` names."""
    if hub.settings.queue == "celery":
        from hub.jobs.celery_queue import CeleryQueue

        return CeleryQueue(hub)
    from hub.jobs.inline import InlineQueue

    return InlineQueue(hub)
