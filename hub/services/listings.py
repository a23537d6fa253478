"""Catalog listings kept in memory between requests: the rule for when one still holds.

A listing (a page of the API's `/adapters`, the Hugging Face `list_models`, a catalog page
of the web) costs a query and the loading and shaping of its rows; the same popular pages
are asked for over and over. Each process keeps the listings it computed, keyed by the
surface, the query and the caller's audience (`hub.services.access.audience`: what the
caller may see), and serves one again while both hold:

- the catalog's generation (`hub.models.CatalogState`) is the one it was computed at:
  every transaction that writes a user, an adapter, its tags, versions, files or lineage
  moves the generation on as it commits, in whichever process, so a publish, a PATCH, a
  yank or a visibility change shows in the very next listing anywhere;
- it is younger than `max_age` seconds: download counts change without moving the
  generation (a download is not a catalog write), so a listing shows counts, and orders
  by them, at most this old. The API's view of one adapter is kept the same way, with
  its download count read afresh for every request.

The generation is read before the listing is computed, in the same session: a write that
commits in between makes the entry older than its generation says, never newer, so the
next request recomputes it.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.models import CatalogState

T = TypeVar("T")

#: Listings a process keeps: a page of 100 adapters is a few tens of KB.
DEFAULT_SIZE = 1024


def catalog_generation(session: Session) -> int | None:
    """The catalog's current generation; None when the database has no generation row."""
    return session.scalar(select(CatalogState.generation).where(CatalogState.id == 1))


class ListingCache:
    """Listings by key, each with the generation it was computed at; least recently used
    first out. Shared by a process's threads; the values must not be changed by callers."""

    def __init__(self, max_age: float, size: int = DEFAULT_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[int, float, object]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, session: Session, key: Hashable, compute: Callable[[], T]) -> T:
        """The listing for `key`: kept, if still current, else `compute()` (in `session`)."""
        if self.max_age <= 0:
            return compute()
        generation = catalog_generation(session)
        if generation is None:
            return compute()
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == generation and entry[1] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[2]  # type: ignore[return-value]
            self.misses += 1
        value = compute()
        with self._lock:
            self._entries[key] = (generation, now + self.max_age, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every listing."""
        with self._lock:
            self._entries.clear()
