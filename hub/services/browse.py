"""What the catalog pages show beside a listing: the filters' choices, each card's rank,
whether an owner exists, and a version's model card text."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.formats.readme import readme_body
from hub.models import Adapter, AdapterTag, User, Version, VersionFile
from hub.services.access import visible_clause
from hub.services.accounts import Principal
from hub.services.shapes import latest_version
from hub.storage import BlobStore

#: How many of each filter's values a page offers (the most used first); any other value
#: still filters when typed.
CHOICES = 100
CARD_FILE = "README.md"


def filter_choices(session: Session, principal: Principal | None) -> dict[str, list[str]]:
    """The base models, tasks and tags of the adapters the caller can see, most used first."""
    visible = visible_clause(principal)
    choices = {}
    for key, column in (("base_model", Adapter.base_model), ("task", Adapter.task)):
        stmt = (select(column).where(visible, column.is_not(None)).group_by(column)
                .order_by(func.count().desc(), column).limit(CHOICES))
        choices[key] = list(session.scalars(stmt))
    stmt = (select(AdapterTag.tag).join(Adapter, AdapterTag.adapter_id == Adapter.id)
            .where(visible).group_by(AdapterTag.tag)
            .order_by(func.count().desc(), AdapterTag.tag).limit(CHOICES))
    choices["tag"] = list(session.scalars(stmt))
    return choices


def latest_ranks(session: Session, adapters: list[Adapter]) -> dict[int, int | None]:
    """Adapter id -> the rank `r` of its latest version, in one query for a whole page."""
    latest = {adapter.id: latest_version(adapter) for adapter in adapters}
    ids = [version.id for version in latest.values() if version is not None]
    rows = session.execute(select(Version.id, Version.r).where(Version.id.in_(ids))) if ids \
        else []
    ranks = {row.id: row.r for row in rows}
    return {adapter_id: ranks.get(version.id) if version is not None else None
            for adapter_id, version in latest.items()}


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
