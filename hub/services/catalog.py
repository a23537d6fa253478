"""Reading the registry: lookups with visibility, search with keyset pagination, edits."""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from hub.errors import InvalidRequest, InvalidVersion, NotFound
from hub.licenses import get_license
from hub.models import Adapter, AdapterTag, User, Version, VersionFile, VersionParent, utcnow
from hub.services.access import require_owner, visible_clause
from hub.services.accounts import Principal
from hub.services.names import check_adapter_name, check_text, check_user_name, parse_metadata
from hub.services.shapes import latest_version

SORTS = ("downloads", "created", "updated", "name")
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


def _adapter_query(detail: bool = True):
    """Adapters with owner and tags; with `detail`, every version's files and parents too.

    A summary (listings) needs only each version's label, yank flag and time, to name
    `latest_version`: loading files and lineage for a page of 100 adapters would not do.
    """
    if detail:
        each = selectinload(Adapter.versions)
        versions = (each.defer(Version.layout), each.selectinload(Version.files),
                    each.selectinload(Version.parents),
                    each.selectinload(Version.children).selectinload(VersionParent.child)
                    .selectinload(Version.adapter).selectinload(Adapter.owner))
    else:
        versions = (selectinload(Adapter.versions).load_only(
            Version.label, Version.yanked, Version.created_at, Version.adapter_id),)
    return (select(Adapter).join(User, Adapter.owner_id == User.id)
            .options(selectinload(Adapter.owner), selectinload(Adapter.tags), *versions))


def get_adapter(session: Session, principal: Principal | None, owner: str, name: str) -> Adapter:
    """The adapter `owner/name` if the caller may see it; NotFound otherwise (never 403)."""
    check_user_name(owner)
    check_adapter_name(name)
    adapter = session.scalar(_adapter_query().where(User.name == owner, Adapter.name == name)
                             .where(visible_clause(principal)))
    if adapter is None:
        raise NotFound(f"No adapter {owner}/{name}.")
    return adapter


def get_version(session: Session, principal: Principal | None, owner: str, name: str,
                label: str) -> tuple[Adapter, Version]:
    """A version by label, or `latest` (the newest version that is not yanked)."""
    adapter = get_adapter(session, principal, owner, name)
    if label == "latest":
        version = latest_version(adapter)
        if version is None:
            raise NotFound(f"{owner}/{name} has no version that is not yanked.")
        return adapter, version
    for version in adapter.versions:
        if version.label == label:
            return adapter, version
    raise NotFound(f"{owner}/{name} has no version {label!r}.")


def get_file(session: Session, principal: Principal | None, owner: str, name: str,
             label: str, path: str) -> tuple[Adapter, Version, VersionFile]:
    """A file of a version, with the same visibility rules."""
    if label != "latest":
        # The download hot path: one query for the row it needs.
        row = session.execute(
            select(Adapter, Version, VersionFile)
            .join(User, Adapter.owner_id == User.id)
            .join(Version, Version.adapter_id == Adapter.id)
            .join(VersionFile, VersionFile.version_id == Version.id)
            .where(User.name == owner, Adapter.name == name, Version.label == label,
                   VersionFile.path == path)
            .where(visible_clause(principal))).first()
        if row is not None:
            return row[0], row[1], row[2]
    # `latest`, or something is missing: the slower path names exactly what.
    adapter, version = get_version(session, principal, owner, name, label)
    for file in version.files:
        if file.path == path:
            return adapter, version, file
    raise NotFound(f"{owner}/{name}@{version.label} has no file {path!r}.")


def record_download(session: Session, adapter_id: int) -> None:
    """Count one download, atomically in SQL so concurrent downloads are not lost."""
    session.execute(update(Adapter).where(Adapter.id == adapter_id)
                    .values(downloads=Adapter.downloads + 1))


def update_adapter(session: Session, principal: Principal | None, owner: str, name: str,
                   changes: dict) -> Adapter:
    """PATCH: change description, tags, task or visibility (owner or admin)."""
    adapter = get_adapter(session, principal, owner, name)
    require_owner(principal, owner)
    if "base_model" in (changes or {}):
        raise InvalidRequest("'base_model' comes from the versions and cannot be patched.")
    metadata = parse_metadata(changes if changes is not None else {})
    if metadata.description is not None:
        adapter.description = metadata.description
    if metadata.task is not None:
        adapter.task = metadata.task or None
    if metadata.visibility is not None:
        adapter.visibility = metadata.visibility
    if metadata.tags is not None:
        set_tags(adapter, metadata.tags)
    adapter.updated_at = utcnow()
    session.flush()
    return adapter


def set_tags(adapter: Adapter, tags: list[str]) -> None:
    """Replace the adapter's tags with `tags` (checked, duplicates folded), in that order.

    A tag the adapter keeps keeps its row: the unit of work flushes new rows before it
    deletes orphans, so clearing and re-adding "sql" would insert the second ("adapter",
    "sql") row while the first still exists.
    """
    wanted = list(dict.fromkeys(tags))
    kept = {row.tag: row for row in adapter.tags if row.tag in wanted}
    for row in [row for row in adapter.tags if row.tag not in kept]:
        adapter.tags.remove(row)
    for position, tag in enumerate(wanted):
        row = kept.get(tag)
        if row is None:
            adapter.tags.append(AdapterTag(tag=tag, position=position))
        else:
            row.position = position
    adapter.tags.sort(key=lambda row: row.position)


def yank_version(session: Session, principal: Principal | None, owner: str, name: str,
                 label: str, reason: str | None) -> tuple[Adapter, Version]:
    """Hide a version from `latest`; it stays downloadable by its label."""
    adapter, version = _owned_version(session, principal, owner, name, label, "Yank")
    if reason is not None:
        check_text(reason, 1000, "'reason'", multiline=True)
    version.yanked = True
    version.yank_reason = reason or None
    adapter.updated_at = utcnow()
    session.flush()
    return adapter, version


def unyank_version(session: Session, principal: Principal | None, owner: str, name: str,
                   label: str) -> tuple[Adapter, Version]:
    """Undo a yank: the version counts for `latest` again (a no-op when not yanked)."""
    adapter, version = _owned_version(session, principal, owner, name, label, "Unyank")
    if version.yanked:
        version.yanked = False
        version.yank_reason = None
        adapter.updated_at = utcnow()
        session.flush()
    return adapter, version


def _owned_version(session: Session, principal: Principal | None, owner: str, name: str,
                   label: str, verb: str) -> tuple[Adapter, Version]:
    if label == "latest":
        raise InvalidVersion(f"{verb} a version by its label, not 'latest'.")
    adapter, version = get_version(session, principal, owner, name, label)
    require_owner(principal, owner)
    return adapter, version


@dataclass(frozen=True)
class Query:
    """A catalog query: filters, sort order and a page."""

    search: str | None = None
    base_model: str | None = None
    license: str | None = None
    tag: str | None = None
    task: str | None = None
    owner: str | None = None
    sort: str = "downloads"
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def parse_query(args) -> Query:
    """Build a Query from request arguments, refusing what it does not understand."""
    known = {"search", "base_model", "license", "tag", "task", "owner", "sort", "limit",
             "cursor"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidRequest(f"Unknown query parameter(s): {', '.join(unknown)}; known are"
                             f" {', '.join(sorted(known))}.")
    values = {}
    for key in known - {"limit"}:
        value = args.get(key)
        if value is None:
            continue
        values[key] = check_text(value, 256, f"Query parameter {key!r}")
    if "license" in values:  # the ids publish accepts: any case, SPDX aliases
        values["license"] = get_license(values["license"]).id
    if values.get("sort", "downloads") not in SORTS:
        raise InvalidRequest(f"Unknown sort {values['sort']!r}: use one of {', '.join(SORTS)}.")
    if "limit" in args:
        try:
            limit = int(args["limit"])
        except (TypeError, ValueError):
            raise InvalidRequest("'limit' must be an integer from 1 to 100.") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest("'limit' must be an integer from 1 to 100.")
        values["limit"] = limit
    return Query(**values)


def _like(term: str) -> str:
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# Each sort: the column, whether it descends, and how a cursor value is decoded.
_SORT_COLUMNS = {
    "downloads": (Adapter.downloads, True, int),
    "created": (Adapter.created_at, True, datetime.fromisoformat),
    "updated": (Adapter.updated_at, True, datetime.fromisoformat),
    "name": (Adapter.name, False, str),
}


def _encode_cursor(sort: str, adapter: Adapter) -> str:
    column, _, _ = _SORT_COLUMNS[sort]
    value = getattr(adapter, column.key)
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([sort, value, adapter.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(sort: str, cursor: str):
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, value, last_id = json.loads(raw)
        _, _, decode = _SORT_COLUMNS[sort]
        if cursor_sort != sort or not isinstance(last_id, int) or not 0 <= last_id < 2**31:
            raise ValueError("cursor for another sort")
        if sort == "downloads" and not (isinstance(value, int) and 0 <= value < 2**63):
            raise ValueError("downloads out of range")
        if not isinstance(value, (str, int)) or (
                isinstance(value, str) and (len(value) > 96 or "\0" in value)):
            raise ValueError("bad value")
        return decode(value), last_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("'cursor' is not valid for this query; use the next_cursor of"
                             " the previous page, with the same sort.") from None


def search_adapters(session: Session, principal: Principal | None,
                    query: Query) -> tuple[list[Adapter], str | None]:
    """One page of adapters the caller can see, and the cursor of the next page."""
    stmt = _adapter_query(detail=False).where(visible_clause(principal))
    if query.search:
        like = _like(query.search)
        tag_match = exists().where(AdapterTag.adapter_id == Adapter.id,
                                   func.lower(AdapterTag.tag).like(like, escape="\\"))
        stmt = stmt.where(or_(func.lower(Adapter.name).like(like, escape="\\"),
                              func.lower(Adapter.description).like(like, escape="\\"),
                              tag_match))
    if query.base_model:
        stmt = stmt.where(func.lower(Adapter.base_model) == query.base_model.lower())
    if query.license:
        stmt = stmt.where(Adapter.license == query.license)
    if query.task:
        stmt = stmt.where(Adapter.task == query.task)
    if query.owner:
        stmt = stmt.where(User.name == query.owner)
    if query.tag:
        stmt = stmt.where(exists().where(AdapterTag.adapter_id == Adapter.id,
                                         AdapterTag.tag == query.tag))
    column, descending, _ = _SORT_COLUMNS[query.sort]
    if query.cursor:
        value, last_id = _decode_cursor(query.sort, query.cursor)
        if descending:
            stmt = stmt.where(or_(column < value, and_(column == value, Adapter.id < last_id)))
        else:
            stmt = stmt.where(or_(column > value, and_(column == value, Adapter.id > last_id)))
    order = (column.desc(), Adapter.id.desc()) if descending else (column.asc(),
                                                                     Adapter.id.asc())
    rows = list(session.scalars(stmt.order_by(*order).limit(query.limit + 1)))
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[:query.limit]
        next_cursor = _encode_cursor(query.sort, rows[-1])
    return rows, next_cursor
