"""SQLAlchemy 2.0 models: users, tokens, adapters, versions and their files, merges."""
from __future__ import annotations

from datetime import datetime, timezone
from itertools import chain

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index,
                        Integer, String, Text, UniqueConstraint, event, inspect, select, update)
from sqlalchemy.orm import Mapped, Session, column_property, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from hub.db import Base


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def _name_key(context) -> str:
    # Filled from the row's name on insert, so no code path can create a row without it.
    from hub.services.names import name_key

    return name_key(context.get_current_parameters()["name"])


class UTCDateTime(TypeDecorator):
    """A timestamp that always comes back timezone-aware UTC (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class User(Base):
    """An account: owns adapters, holds tokens."""

    __tablename__ = "users"
    __table_args__ = (Index("ix_users_name_key", "name_key", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # hub.services.names.name_key of the name, unique: no look-alike of an existing name.
    # Always set (the default fills it); nullable only because SQLite cannot add a NOT NULL
    # column to a table others reference without rebuilding it under their foreign keys.
    name_key: Mapped[str] = mapped_column(String(64), nullable=True, default=_name_key)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # werkzeug's scrypt hash (hub.services.accounts.set_password); None: no web sign-in.
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)

    tokens: Mapped[list[Token]] = relationship(back_populates="user")


class Token(Base):
    """An API token, stored as its sha256 (the token itself is shown once)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship(back_populates="tokens")


class Adapter(Base):
    """A named adapter, `owner/name`, holding immutable versions."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("owner_id", "name"),
                      Index("ix_adapters_owner_id_name_key", "owner_id", "name_key", unique=True),
                      # One per sort of the catalog, with the id that breaks ties: a page
                      # is a range of the index, however deep the cursor.
                      Index("ix_adapters_downloads_id", "downloads", "id"),
                      Index("ix_adapters_created_at_id", "created_at", "id"),
                      Index("ix_adapters_updated_at_id", "updated_at", "id"),
                      Index("ix_adapters_name_id", "name", "id"),
                      # Browsing one base model, most downloaded first (the default sort).
                      Index("ix_adapters_base_model_key_downloads_id", "base_model_key",
                            "downloads", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(96))
    name_key: Mapped[str] = mapped_column(String(96), nullable=True, default=_name_key)
    description: Mapped[str] = mapped_column(Text, default="")
    base_model: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    license: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    task: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    visibility: Mapped[str] = mapped_column(String(16), default="public")
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Derived, never set by hand: written by _refresh_derived below whenever the source
    # column changes. The base model as the catalog's filter compares it (any case)...
    base_model_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # ... and the name, tags and description as words (hub.services.search).
    search_name: Mapped[str] = mapped_column(Text, default="", deferred=True)
    search_tags: Mapped[str] = mapped_column(Text, default="", deferred=True)
    search_text: Mapped[str] = mapped_column(Text, default="", deferred=True)

    owner: Mapped[User] = relationship()
    tags: Mapped[list[AdapterTag]] = relationship(cascade="all, delete-orphan",
                                                  order_by="AdapterTag.position")
    versions: Mapped[list[Version]] = relationship(
        back_populates="adapter", order_by="(Version.created_at.desc(), Version.id.desc())")


class AdapterTag(Base):
    """One tag of an adapter (a table, so tag filters are plain indexed joins)."""

    __tablename__ = "adapter_tags"
    # (tag, adapter_id): the tag filter is answered from the index alone.
    __table_args__ = (UniqueConstraint("adapter_id", "tag"),
                      Index("ix_adapter_tags_tag_adapter_id", "tag", "adapter_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer, default=0)


class Version(Base):
    """An immutable published version: its files never change; it can only be yanked."""

    __tablename__ = "versions"
    # (adapter_id, created_at, id): an adapter's latest version without a sort.
    __table_args__ = (UniqueConstraint("adapter_id", "label"),
                      Index("ix_versions_adapter_id_created_at_id", "adapter_id", "created_at",
                            "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"),
                                            index=True)
    label: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    license: Mapped[str] = mapped_column(String(64))
    license_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    license_link: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    base_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    peft_type: Mapped[str] = mapped_column(String(32))
    task_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    r: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lora_alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    target_modules: Mapped[list] = mapped_column(JSON, default=list)
    num_parameters: Mapped[int] = mapped_column(BigInteger, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    mergeable: Mapped[bool] = mapped_column(Boolean, default=False)
    # Why the merge engine would refuse it (hub.formats.rules), when mergeable is false.
    not_mergeable_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # sha256 over the sorted (path, sha256) pairs: identical re-sends are recognised by it.
    fingerprint: Mapped[str] = mapped_column(String(64))
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    yank_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    # What a merge plan needs of the weights (module shapes and ranks, dtypes), read once
    # from the safetensors header (hub.services.layouts) so plans come from the database.
    layout: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    adapter: Mapped[Adapter] = relationship(back_populates="versions")
    files: Mapped[list[VersionFile]] = relationship(cascade="all, delete-orphan",
                                                    order_by="VersionFile.path")
    parents: Mapped[list[VersionParent]] = relationship(
        cascade="all, delete-orphan", foreign_keys="VersionParent.version_id")
    # Lineage the other way: the versions merged from this one.
    children: Mapped[list[VersionParent]] = relationship(
        foreign_keys="VersionParent.parent_version_id", viewonly=True)


# The label of an adapter's latest version (newest, not yanked), for listings: loaded in
# the page's own query (`undefer`), so a page does not load every version of each adapter.
Adapter.latest_label = column_property(
    select(Version.label).where(Version.adapter_id == Adapter.id, Version.yanked.is_(False))
    .order_by(Version.created_at.desc(), Version.id.desc()).limit(1)
    .correlate_except(Version).scalar_subquery(), deferred=True)


@event.listens_for(Adapter, "before_insert")
@event.listens_for(Adapter, "before_update")
def _refresh_derived(_mapper, _connection, adapter: Adapter) -> None:
    """Keep the derived columns in step with what they derive from, on every write path."""
    from hub.services.search import document

    state = inspect(adapter)
    changed = {key for key in ("name", "description", "tags", "base_model")
               if state.key is None or state.attrs[key].history.has_changes()}
    if not changed:
        return
    derived = document(adapter.name, [row.tag for row in adapter.tags] if "tags" in changed
                       else [], adapter.description)
    if "name" in changed:
        adapter.search_name = derived["search_name"]
    if "tags" in changed:
        adapter.search_tags = derived["search_tags"]
    if "description" in changed:
        adapter.search_text = derived["search_text"]
    if "base_model" in changed:
        adapter.base_model_key = adapter.base_model.lower() if adapter.base_model else None


class VersionFile(Base):
    """A file of a version: where its bytes live (a content address) and what they are."""

    __tablename__ = "version_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    blob_key: Mapped[str] = mapped_column(String(128))


class BlobLock(Base):
    """A per-blob lock for the length of one transaction (hub.services.blobs); never kept."""

    __tablename__ = "blob_locks"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)


class VersionParent(Base):
    """Lineage: a merged version names the versions it was made from, with weights."""

    __tablename__ = "version_parents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            index=True)
    parent_version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    weight: Mapped[float] = mapped_column(Float)

    parent: Mapped[Version] = relationship(foreign_keys=[parent_version_id])
    child: Mapped[Version] = relationship(foreign_keys=[version_id], viewonly=True)


MERGE_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")


class Merge(Base):
    """A merge job: the row is the truth (status, progress, heartbeat, result); a queue
    only carries its id."""

    __tablename__ = "merges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # sha256 of the canonical spec (hub.services.merge_plan): equal keys, equal results.
    cache_key: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    modules_total: Mapped[int] = mapped_column(Integer, default=0)
    output_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Who holds the claim: a running merge's updates are refused to anyone else.
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    license: Mapped[dict] = mapped_column(JSON, default=dict)
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    archive_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    archive_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    published_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"),
                                                             nullable=True)

    requester: Mapped[User] = relationship()
    published_version: Mapped[Version | None] = relationship()
    sources: Mapped[list[MergeSource]] = relationship(cascade="all, delete-orphan",
                                                      order_by="MergeSource.position")
    files: Mapped[list[MergeFile]] = relationship(cascade="all, delete-orphan",
                                                  order_by="MergeFile.path")


class MergeSource(Base):
    """One source of a merge: a published version and its weight, in the order given."""

    __tablename__ = "merge_sources"
    __table_args__ = (UniqueConstraint("merge_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    merge_id: Mapped[str] = mapped_column(ForeignKey("merges.id", ondelete="CASCADE"),
                                          index=True)
    position: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    weight: Mapped[float] = mapped_column(Float)

    version: Mapped[Version] = relationship()


class MergeFile(Base):
    """A result file of a merge, stored as a content-addressed blob like a version's."""

    __tablename__ = "merge_files"
    __table_args__ = (UniqueConstraint("merge_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    merge_id: Mapped[str] = mapped_column(ForeignKey("merges.id", ondelete="CASCADE"),
                                          index=True)
    path: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    blob_key: Mapped[str] = mapped_column(String(128), index=True)


class CatalogState(Base):
    """The catalog's generation: one row, moved on by every transaction that writes what a
    listing shows, so a cached listing (hub.services.listings) can tell it is still current.
    """

    __tablename__ = "catalog_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


#: The rows a listing is made of. Download counts are not among them: they change with every
#: download (a Core UPDATE, hub.services.catalog.record_download), and a listing may show a
#: count as old as the cache's max age rather than be recomputed for each download.
CATALOG_ROWS = (User, Adapter, AdapterTag, Version, VersionFile, VersionParent)
_CATALOG_WRITTEN = "lorastack.catalog_written"


def _writes_catalog(session: Session) -> bool:
    return any(isinstance(row, CATALOG_ROWS)
               for row in chain(session.new, session.dirty, session.deleted))


@event.listens_for(Session, "after_flush")
def _note_catalog_write(session: Session, _context) -> None:
    # The pending sets still hold what this flush wrote (they are reset after the event).
    if _writes_catalog(session):
        session.info[_CATALOG_WRITTEN] = True


# The listeners are on the Session class, so every session in the process is watched,
# however it was made (a catalog write from a session that bypassed hub.db.Database would
# otherwise leave listings stale); a session that writes no catalog row only flushes.
@event.listens_for(Session, "before_commit")
def _bump_catalog_generation(session: Session) -> None:
    """Move the generation on in the transaction that wrote the catalog, so readers see
    the new rows and the new generation together. Last, just before COMMIT: on PostgreSQL
    the row stays locked only for that instant, not through a long publish."""
    if session.in_nested_transaction():
        return  # a savepoint's release: the outer transaction's COMMIT is the one
    session.flush()
    if session.info.pop(_CATALOG_WRITTEN, False):
        session.execute(update(CatalogState).where(CatalogState.id == 1)
                        .values(generation=CatalogState.generation + 1))


@event.listens_for(Session, "after_transaction_end")
def _forget_catalog_write(session: Session, transaction) -> None:
    # Only when the outer transaction ends: a savepoint rolled back leaves the writes
    # flushed before it, which still move the generation at COMMIT.
    if transaction.parent is None:
        session.info.pop(_CATALOG_WRITTEN, None)
