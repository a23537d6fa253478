"""The merge service's use cases on the database: request, read, list, cancel.

The row is the truth; a queue only carries its id (hub.jobs). Running a merge is
hub.services.merge_run, publishing one hub.services.merge_publish.
"""
from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from hub.config import Settings
from hub.errors import (InvalidRequest, MergeExpired, NotFound, RateLimited)
from hub.models import (ACTIVE_STATUSES, Adapter, Merge, MergeFile, MergeSource, Version,
                        utcnow)
from hub.services.access import can_see_merge, require_token, require_writer
from hub.services.accounts import Principal
from hub.services.blobs import lock_blobs
from hub.services.merge_plan import MergePlan, MergeRequest, plan_merge, request_view
from hub.storage import BlobStore, blob_key

ARCHIVE_NAME = "archive.zip"
#: How long a caller over the active-merge limit is asked to wait before trying again.
RETRY_AFTER_SECONDS = 30
MAX_LIMIT = 100


def request_merge(session: Session, store: BlobStore, settings: Settings,
                  principal: Principal | None, request: MergeRequest) -> tuple[Merge, bool]:
    """Queue a merge, or find the caller's queued, running or succeeded one with the same
    cache key; True when a new merge row was made (it may be done already: a cache hit)."""
    principal = require_writer(principal)
    plan = plan_merge(session, store, settings, principal, request)
    key = plan.cache_key
    now = utcnow()
    mine = session.scalar(
        _merge_query().where(Merge.cache_key == key, Merge.requester_id == principal.user_id,
                             Merge.status.in_(ACTIVE_STATUSES + ("succeeded",)),
                             Merge.cancel_requested.is_(False))
        .order_by(Merge.created_at.desc()).limit(1))
    if mine is not None and not is_expired(mine, now):
        return mine, False
    active = session.scalar(select(func.count()).select_from(Merge).where(
        Merge.requester_id == principal.user_id, Merge.status.in_(ACTIVE_STATUSES)))
    if active >= settings.max_active_merges:
        raise RateLimited(f"You have {active} merges queued or running; this hub runs at most"
                          f" {settings.max_active_merges} at once per user. Wait for one to"
                          " finish (or cancel one) and send the merge again.",
                          retry_after=RETRY_AFTER_SECONDS)
    merge = _new_merge(principal, plan, now)
    done = session.scalar(
        _merge_query().where(Merge.cache_key == key, Merge.status == "succeeded",
                             or_(Merge.expires_at.is_(None), Merge.expires_at > now))
        .order_by(Merge.finished_at.desc()).limit(1))
    if done is not None and _still_served(session, done):
        _copy_result(done, merge, now, settings)
    session.add(merge)
    session.flush()
    return merge, True


def _new_merge(principal: Principal, plan: MergePlan, now: datetime) -> Merge:
    return Merge(
        id=uuid.uuid4().hex, requester_id=principal.user_id, cache_key=plan.cache_key,
        spec=request_view(plan.request, plan), status="queued", progress=0.0,
        modules_total=plan.modules, output_bytes=plan.output_bytes, attempts=0,
        cancel_requested=False, created_at=now,
        license={**plan.license.to_dict(), "reasons": plan.reasons},
        sources=[MergeSource(position=i, version_id=s.version.id, weight=s.weight)
                 for i, s in enumerate(plan.sources)])


def _still_served(session: Session, done: Merge) -> bool:
    """Whether `done`'s blobs may be shared: under their locks (hub.services.blobs), it has
    not expired. gc deletes a blob only when no live merge names it, so one that expired
    after the query above may have lost its blobs to a gc that held the locks first."""
    keys = [f.blob_key for f in done.files]
    if done.archive_sha256:
        keys.append(blob_key(done.archive_sha256))
    lock_blobs(session, keys)
    expires_at = session.scalar(select(Merge.expires_at).where(Merge.id == done.id))
    return expires_at is None or expires_at > utcnow()


def _copy_result(done: Merge, merge: Merge, now: datetime, settings: Settings) -> None:
    """Another requester's identical merge: its result blobs serve this one too."""
    merge.status = "succeeded"
    merge.progress = 1.0
    merge.device = done.device
    merge.report = done.report
    merge.started_at = merge.finished_at = now
    merge.expires_at = expiry(now, settings)
    merge.archive_sha256, merge.archive_size = done.archive_sha256, done.archive_size
    merge.files = [MergeFile(path=f.path, size=f.size, sha256=f.sha256, blob_key=f.blob_key)
                   for f in done.files]


def expiry(finished: datetime, settings: Settings) -> datetime:
    """When an unpublished result finished at `finished` expires."""
    return finished + timedelta(days=settings.merge_ttl_days)


def is_expired(merge: Merge, now: datetime | None = None) -> bool:
    """Whether the merge's result has outlived its time to live."""
    return merge.expires_at is not None and merge.expires_at <= (now or utcnow())


def _merge_query():
    return select(Merge).options(
        selectinload(Merge.files),
        selectinload(Merge.sources).selectinload(MergeSource.version)
        .selectinload(Version.adapter).selectinload(Adapter.owner))


def get_merge(session: Session, principal: Principal | None, merge_id: str) -> Merge:
    """The merge, to its requester and admins; NotFound to everyone else."""
    principal = require_token(principal)
    merge = None
    if isinstance(merge_id, str) and len(merge_id) <= 32:
        merge = session.scalar(_merge_query().where(Merge.id == merge_id))
    if merge is None or not can_see_merge(principal, merge.requester_id):
        raise NotFound(f"No merge {merge_id}.")
    return merge


def list_merges(session: Session, principal: Principal | None, limit: int = 20,
                cursor: str | None = None) -> tuple[list[Merge], str | None]:
    """The caller's merges, newest first, one keyset page at a time."""
    principal = require_token(principal)
    stmt = _merge_query().where(Merge.requester_id == principal.user_id)
    if cursor:
        created, last_id = _decode_cursor(cursor)
        stmt = stmt.where(or_(Merge.created_at < created,
                              and_(Merge.created_at == created, Merge.id < last_id)))
    rows = list(session.scalars(stmt.order_by(Merge.created_at.desc(), Merge.id.desc())
                                .limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        raw = json.dumps([last.created_at.isoformat(), last.id]).encode()
        next_cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return rows, next_cursor


def parse_limit(args) -> tuple[int, str | None]:
    """`limit` (1..100, default 20) and `cursor` of a listing's query string."""
    unknown = sorted(set(args) - {"limit", "cursor"})
    if unknown:
        raise InvalidRequest(f"Unknown query parameter(s): {', '.join(unknown)}; known are"
                             " cursor, limit.")
    limit = 20
    if "limit" in args:
        try:
            limit = int(args["limit"])
        except (TypeError, ValueError):
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest("'limit' must be an integer from 1 to 100.")
    return limit, args.get("cursor") or None


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, last_id = json.loads(raw)
        if not isinstance(last_id, str) or len(last_id) > 32 or not isinstance(created, str):
            raise ValueError("bad cursor")
        return datetime.fromisoformat(created), last_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("'cursor' is not valid; use the next_cursor of the previous"
                             " page.") from None


def queue_position(session: Session, merge: Merge) -> int | None:
    """A queued merge's place in line (1: next to run), oldest first as workers take them."""
    if merge.status != "queued":
        return None
    ahead = session.scalar(select(func.count()).select_from(Merge).where(
        Merge.status == "queued",
        or_(Merge.created_at < merge.created_at,
            and_(Merge.created_at == merge.created_at, Merge.id < merge.id))))
    return ahead + 1


def cancel_merge(session: Session, principal: Principal | None, merge_id: str) -> Merge:
    """Cancel a queued merge at once; ask a running one's worker to stop between modules.

    A merge that already ended is returned as it is.
    """
    require_writer(principal)
    merge = get_merge(session, principal, merge_id)
    now = utcnow()
    # Atomic against a worker's claim: exactly one of the two changes a queued row.
    cancelled = session.execute(
        update(Merge).where(Merge.id == merge.id, Merge.status == "queued")
        .values(status="cancelled", finished_at=now, error_code="merge_cancelled",
                error_detail="Cancelled by its requester before it started.")
        .execution_options(synchronize_session=False)).rowcount
    if not cancelled:
        session.execute(update(Merge).where(Merge.id == merge.id, Merge.status == "running")
                        .values(cancel_requested=True)
                        .execution_options(synchronize_session=False))
    session.flush()
    session.refresh(merge)
    return merge


def result_file(session: Session, principal: Principal | None, merge_id: str,
                path: str) -> tuple[Merge, str, int, str]:
    """(merge, blob key, size, sha256) of a result file or the archive; 410 once expired."""
    merge = get_merge(session, principal, merge_id)
    if merge.status != "succeeded":
        raise NotFound(f"Merge {merge.id} is {merge.status}: it has no files"
                       + (" yet." if merge.status in ACTIVE_STATUSES else "."))
    if is_expired(merge):
        raise MergeExpired(f"The result of merge {merge.id} expired at"
                           f" {merge.expires_at.isoformat()}; send the merge again to"
                           " recompute it, or publish results you want to keep.")
    if path == ARCHIVE_NAME:
        return merge, blob_key(merge.archive_sha256), merge.archive_size, merge.archive_sha256
    for file in merge.files:
        if file.path == path:
            return merge, file.blob_key, file.size, file.sha256
    raise NotFound(f"Merge {merge.id} has no file {path!r}; it has "
                   f"{', '.join(f.path for f in merge.files)}.")
