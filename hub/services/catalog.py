"""Reading the registry: lookups with visibility, search with keyset pagination, edits."""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import exists, select, tuple_, update
from sqlalchemy.orm import Session, contains_eager, selectinload, undefer

from hub.errors import InvalidRequest, InvalidVersion, NotFound
from hub.licenses import get_license
from hub.models import Adapter, AdapterTag, User, Version, VersionFile, VersionParent, utcnow
from hub.services.access import require_owner, visible_clause
from hub.services.accounts import Principal
from hub.services import relevance, search
from hub.services.names import check_adapter_name, check_text, check_user_name, parse_metadata
from hub.services.search import Terms
from hub.services.shapes import latest_version

SORTS = ("relevance", "downloads", "created", "updated", "name")
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


def _adapter_query():
    """An adapter with owner, tags, and every version's files and lineage (its page)."""
    each = selectinload(Adapter.versions)
    versions = (each.defer(Version.layout), each.selectinload(Version.files),
                each.selectinload(Version.parents),
                each.selectinload(Version.children).selectinload(VersionParent.child)
                .selectinload(Version.adapter).selectinload(Adapter.owner))
    # The owner comes in the adapter's own row: the join that finds the adapter by name.
    return (select(Adapter).join(User, Adapter.owner_id == User.id)
            .options(contains_eager(Adapter.owner), selectinload(Adapter.tags), *versions))


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


def download_count(session: Session, adapter_id: int) -> int:
    """The adapter's downloads now (a kept view of it may hold an older count)."""
    return session.scalar(select(Adapter.downloads).where(Adapter.id == adapter_id)) or 0


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
    """A catalog query: filters, sort order and a page.

    `sort` None is the default: `relevance` with search words, else `downloads`.
    `relevance` orders by the search score (hub.services.search), then downloads, then
    id; with no search words every score is equal, so it is the downloads order.
    """

    search: str | None = None
    base_model: str | None = None
    license: str | None = None
    tag: str | None = None
    task: str | None = None
    owner: str | None = None
    sort: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @property
    def terms(self) -> Terms:
        """The words of `search`."""
        return Terms.parse(self.search)

    @property
    def key(self) -> Query:
        """The query with its search text as its words: queries that differ only in case,
        accents, punctuation or repeated words ask for the same page (one kept listing)."""
        terms = self.terms
        return replace(self, search=" ".join(terms.words)) if terms else self

    @property
    def order(self) -> str:
        """The sort in effect: the default resolved, `relevance` without words is downloads."""
        if self.sort in (None, "relevance"):
            return "relevance" if self.terms else "downloads"
        return self.sort


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
    query = Query(**values)
    query.terms  # noqa: B018  (refuses too many words now, not in the middle of a query)
    return query


# Each sort: the columns after which the id breaks ties, whether it descends, and how a
# cursor's values are checked and decoded.
def _count(value):
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63):
        raise ValueError("not a count")
    return value


def _text(value):
    if not isinstance(value, str) or len(value) > 96 or "\0" in value:
        raise ValueError("bad value")
    return value


def _moment(value):
    return datetime.fromisoformat(_text(value))


_SORTS = {
    "downloads": ((Adapter.downloads,), True, (_count,)),
    "created": ((Adapter.created_at,), True, (_moment,)),
    "updated": ((Adapter.updated_at,), True, (_moment,)),
    "name": ((Adapter.name,), False, (_text,)),
    "relevance": ((None, Adapter.downloads), True, (_count, _count)),
}


def _encode_cursor(sort: str, values: list) -> str:
    values = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    raw = json.dumps([sort, values[:-1], values[-1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(sort: str, cursor: str) -> list:
    """The sort values and id a cursor carries; InvalidRequest for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, values, last_id = json.loads(raw)
        _, _, decoders = _SORTS[sort]
        if cursor_sort != sort or not isinstance(values, list) or len(values) != len(decoders):
            raise ValueError("cursor for another sort")
        if isinstance(last_id, bool) or not isinstance(last_id, int) or not 0 <= last_id < 2**31:
            raise ValueError("bad id")
        return [decode(value) for decode, value in zip(decoders, values)] + [last_id]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("'cursor' is not valid for this query; use the next_cursor of"
                             " the previous page, with the same sort.") from None


def search_adapters(session: Session, principal: Principal | None,
                    query: Query) -> tuple[list[Adapter], str | None]:
    """One page of adapters the caller can see, and the cursor of the next page.

    The one catalog query every surface uses. The page's ids are found first from the
    narrow columns its order needs, then joined to the adapters, their owners and latest
    version labels in the same statement; the page's tags come in a second. A search in
    relevance order is read a score level at a time (hub.services.relevance) unless
    ranking every match costs less.
    """
    terms, sort = query.terms, query.order
    if not terms and query.search and query.search.strip():
        return [], None  # only punctuation: no word to match (a blank search is no search)
    columns, descending, _ = _SORTS[sort]
    after = _decode_cursor(sort, query.cursor) if query.cursor else None
    dialect = session.get_bind().dialect.name
    ranked = None
    if sort == "relevance" and terms:
        others = any((query.base_model, query.license, query.task, query.owner, query.tag))
        ranked = relevance.ranked_keys(
            session, lambda stmt: _filtered(stmt, principal, query, Terms(()), dialect),
            others, terms, after, query.limit + 1, dialect)
    if ranked is not None:
        rows = _load_keys(session, ranked)
    else:
        keys = [search.score(terms) if column is None else column for column in columns]
        keys.append(Adapter.id)
        page = select(*(key.label(f"k{n}") for n, key in enumerate(keys)))
        page = _filtered(page, principal, query, terms, dialect)
        if after is not None:
            # A row value, not `a < x OR (a = x AND id < y)`: an index range starts at it.
            page = page.where(tuple_(*keys) < tuple_(*after) if descending
                              else tuple_(*keys) > tuple_(*after))
        page = page.order_by(*(key.desc() if descending else key.asc() for key in keys))
        rows = _load_page(session, page.limit(query.limit + 1).subquery(), len(keys),
                          descending)
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[:query.limit]
        last = rows[-1]
        next_cursor = _encode_cursor(sort, [*last[1:], last[0].id])
    return [row[0] for row in rows], next_cursor


def latest_versions(session: Session, adapters: list[Adapter]) -> dict[int, Version]:
    """The latest version of each listed adapter (by its `latest_label`), in one query:
    a listing loads no versions."""
    labels = {adapter.id: adapter.latest_label for adapter in adapters
              if adapter.latest_label is not None}
    if not labels:
        return {}
    rows = session.scalars(select(Version).where(
        tuple_(Version.adapter_id, Version.label).in_(list(labels.items()))))
    return {version.adapter_id: version for version in rows}


def _cards(stmt):
    """`stmt` (adapters, joined to nothing) with what a listing shows of each: its owner in
    the same row, its latest version's label, and its tags in one more statement."""
    return stmt.join(Adapter.owner).options(
        contains_eager(Adapter.owner), undefer(Adapter.latest_label), selectinload(Adapter.tags))


def _load_page(session: Session, page, keys: int, descending: bool) -> list:
    """The adapters of a page's keys (`k0`..: sort values, then the id), in its order."""
    found = [page.c[f"k{n}"] for n in range(keys)]
    stmt = _cards(select(Adapter, *found[:-1]).join(page, Adapter.id == found[-1]))
    stmt = stmt.order_by(*(key.desc() if descending else key.asc() for key in found))
    return session.execute(stmt).all()


def _load_keys(session: Session, keys: list) -> list:
    """`_load_page` for a page whose keys (score, downloads, id) are already known."""
    if not keys:
        return []
    stmt = _cards(select(Adapter).where(Adapter.id.in_([key[-1] for key in keys])))
    adapters = {adapter.id: adapter for adapter in session.scalars(stmt)}
    return [(adapters[key[-1]], *key[:-1]) for key in keys]


def _filtered(stmt, principal: Principal | None, query: Query, terms: Terms, dialect: str):
    """`stmt` (over adapters) narrowed to what the caller may see and the query asks for."""
    stmt = stmt.where(visible_clause(principal))
    if terms:
        stmt = stmt.where(search.matches(terms, dialect))
    if query.base_model:
        stmt = stmt.where(Adapter.base_model_key == query.base_model.lower())
    if query.license:
        stmt = stmt.where(Adapter.license == query.license)
    if query.task:
        stmt = stmt.where(Adapter.task == query.task)
    if query.owner:
        stmt = stmt.where(Adapter.owner_id == select(User.id).where(User.name == query.owner)
                          .scalar_subquery())
    if query.tag:
        stmt = stmt.where(exists().where(AdapterTag.adapter_id == Adapter.id,
                                         AdapterTag.tag == query.tag))
    return stmt
