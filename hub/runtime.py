"""What every surface of a running hub shares: settings, the database and the blob store.

The app factory builds a Hub once; the API, the web pages, the Hugging Face endpoint and
the job runners all read it through `current_hub()` (in a request) or receive it directly
(workers, the CLI), so none of them imports another to get at it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.config import Settings
from hub.db import Database
from hub.services.listings import ListingCache
from hub.storage import BlobStore, S3Timeouts, open_store

EXTENSION_KEY = "lorastack"


@dataclass
class Hub:
    """What a request handler or a job needs: settings, the database and the blob store."""

    settings: Settings
    db: Database
    store: BlobStore
    #: Where new merges go (hub.jobs.MergeQueue); None in processes that queue nothing.
    queue: Any = None
    #: The catalog listings this process keeps (hub.services.listings); off in a Hub not
    #: opened from settings.
    listings: ListingCache = field(default_factory=lambda: ListingCache(max_age=0))

    def submit_merge(self, merge_id: str) -> None:
        """Hand a committed, queued merge to the queue."""
        if self.queue is not None:
            self.queue.submit(merge_id)

    def close(self) -> None:
        """Stop the queue's threads and close the database's connections."""
        if self.queue is not None:
            self.queue.close()
        self.db.dispose()


def open_hub(settings: Settings) -> Hub:
    """Connect to the database and the blob store that `settings` name."""
    return Hub(settings=settings, db=Database(settings.database_url),
               store=open_settings_store(settings),
               listings=ListingCache(max_age=settings.catalog_cache_seconds))


def open_settings_store(settings: Settings) -> BlobStore:
    """The blob store that `settings` name, with their S3 endpoint and timeouts."""
    return open_store(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url,
                      s3_timeouts=S3Timeouts(connect=settings.s3_connect_timeout,
                                             read=settings.s3_read_timeout,
                                             max_attempts=settings.s3_max_attempts))


def current_hub() -> Hub:
    """The Hub of the Flask app handling the current request."""
    from flask import current_app

    return current_app.extensions[EXTENSION_KEY]
