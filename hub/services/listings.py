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
from hub.services.access import audience
from hub.services.accounts import Principal

T = TypeVar("T")

#: Most listings a process keeps, however small...
DEFAULT_SIZE = 1024
#: ... and most bytes of text they may hold together: a page of 100 adapters with long
#: descriptions is megabytes, and every distinct query (a cursor, a limit) is an entry.
DEFAULT_BUDGET = 64 * 1024 * 1024
#: A listing heavier than this is served but not kept: it would push out many others.
MAX_ENTRY = 1024 * 1024


def catalog_generation(session: Session) -> int | None:
    """The catalog's current generation; None when the database has no generation row."""
    return session.scalar(select(CatalogState.generation).where(CatalogState.id == 1))


def weight(value: object) -> int:
    """About how many bytes `value` holds: the length of its text, plus a little for each
    container and number (the shapes a listing is made of: str, bytes, lists, tuples,
    dicts, numbers, None)."""
    if isinstance(value, (str, bytes)):
        return len(value) + 16
    if isinstance(value, dict):
        return 64 + sum(weight(key) + weight(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return 56 + sum(weight(item) for item in value)
    return 16


class ListingCache:
    """Listings by key and audience, each with the generation it was computed at; least
    recently used first out past `size` entries or `budget` bytes. Shared by a process's
    threads; callers must not change the values they are given."""

    def __init__(self, max_age: float, size: int = DEFAULT_SIZE, budget: int = DEFAULT_BUDGET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.size = size
        self.budget = budget
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[int, float, object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, session: Session, principal: Principal | None, key: Hashable,
            compute: Callable[[], T]) -> T:
        """The listing `key` as `principal` sees it: kept, if still current, else
        `compute()` (in `session`). The caller's audience is part of the key here, so no
        surface can serve one caller's listing to another who may see less."""
        if self.max_age <= 0:
            return compute()
        generation = catalog_generation(session)
        if generation is None:
            return compute()
        key = (key, audience(principal))
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == generation and entry[1] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[2]  # type: ignore[return-value]
            self.misses += 1
        value = compute()
        size = weight(value)
        if size > min(MAX_ENTRY, self.budget):
            return value
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[3]
            self._entries[key] = (generation, now + self.max_age, value, size)
            self._bytes += size
            while len(self._entries) > self.size or self._bytes > self.budget:
                self._bytes -= self._entries.popitem(last=False)[1][3]
        return value

    @property
    def kept_bytes(self) -> int:
        """About how many bytes the kept listings hold."""
        return self._bytes
