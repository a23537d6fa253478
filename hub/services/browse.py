"""What the catalog pages show beside a listing: the filters' choices, each card's rank,
whether an owner exists, and a version's model card text."""
from __future__ import annotations

import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.formats.readme import readme_body
from hub.models import Adapter, AdapterTag, User, Version, VersionFile
from hub.services.access import visible_clause
from hub.services.catalog import latest_versions
from hub.storage import BlobStore

#: How many of each filter's values a page offers (the most used first); any other value
#: still filters when typed.
CHOICES = 100
CHOICES_TTL = 60.0
CARD_FILE = "README.md"

_choices_cache: dict[str, tuple[float, dict[str, list[str]]]] = {}
_choices_lock = threading.Lock()


def filter_choices(session: Session) -> dict[str, list[str]]:
    """The base models, tasks and tags of public adapters, most used first.

    Suggestions only (any value typed still filters), so they are the public adapters'
    for everyone, and kept for CHOICES_TTL seconds: counting them takes longer than the
    rest of a catalog page on a large catalog.
    """
    key = session.get_bind().url.render_as_string(hide_password=True)
    now = time.monotonic()
    with _choices_lock:
        cached = _choices_cache.get(key)
        if cached is not None and now - cached[0] < CHOICES_TTL:
            return cached[1]
    choices = _count_choices(session)
    with _choices_lock:
        _choices_cache[key] = (now, choices)
    return choices


def _count_choices(session: Session) -> dict[str, list[str]]:
    public = visible_clause(None)
    choices = {}
    for key, column in (("base_model", Adapter.base_model), ("task", Adapter.task)):
        stmt = (select(column).where(public, column.is_not(None)).group_by(column)
                .order_by(func.count().desc(), column).limit(CHOICES))
        choices[key] = list(session.scalars(stmt))
    stmt = (select(AdapterTag.tag).join(Adapter, AdapterTag.adapter_id == Adapter.id)
            .where(public).group_by(AdapterTag.tag)
            .order_by(func.count().desc(), AdapterTag.tag).limit(CHOICES))
    choices["tag"] = list(session.scalars(stmt))
    return choices


def latest_ranks(session: Session, adapters: list[Adapter]) -> dict[int, int | None]:
    """Adapter id -> the rank `r` of its latest version, in one query for a whole page
    (a listing's adapters carry their latest label, not their versions)."""
    latest = latest_versions(session, adapters)
    return {adapter.id: latest[adapter.id].r if adapter.id in latest else None
            for adapter in adapters}


def user_exists(session: Session, name: str) -> bool:
    """True when a user of that exact name exists (an owner page of nobody is a 404)."""
    return session.scalar(select(User.id).where(User.name == name)) is not None


def card_file(version: Version) -> VersionFile | None:
    """The version's README.md, if it has one."""
    return next((file for file in version.files if file.path == CARD_FILE), None)


def read_card(store: BlobStore, file: VersionFile) -> str:
    """The model card's Markdown: the README's text without its front matter.

    Publishing checked that it is UTF-8 and that its front matter parses.
    """
    with store.open_read(file.blob_key) as stream:
        text = stream.read().decode("utf-8", errors="replace")
    return readme_body(text)
