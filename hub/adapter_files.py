"""Files sent over HTTP. An adapter's file: one response, and one download count, for the
API's bearer-token route, the pages' signed-in route and the HF protocol's `resolve` (which
adds its own headers). A merge's result file: one response for the API and the pages.

Streamed with Range from the local store, a 302 to a presigned URL on S3; Cache-Control by
hub.services.downloads, so a private file is never kept by a shared cache.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import Response, current_app, redirect, request, send_file

from hub.models import Adapter, VersionFile
from hub.runtime import current_hub
from hub.services import catalog, merges
from hub.services.accounts import Principal
from hub.services.downloads import (counts_as_download, file_cache_control,
                                    redirect_cache_control)


@dataclass(frozen=True)
class StoredFile:
    """What sending a file takes from the database (read before the store is touched)."""

    adapter_id: int
    visibility: str
    path: str
    blob_key: str
    sha256: str
    size: int

    @classmethod
    def of(cls, adapter: Adapter, file: VersionFile) -> StoredFile:
        """The file of `adapter`, while its session is open."""
        return cls(adapter.id, adapter.visibility, file.path, file.blob_key, file.sha256,
                   file.size)


def send_adapter_file(principal: Principal | None, owner: str, name: str, label: str,
                      path: str) -> Response:
    """The bytes of owner/name@label's `path`, as `principal` may see them (404 otherwise)."""
    with current_hub().db.session() as session:
        adapter, _version, file = catalog.get_file(session, principal, owner, name, label, path)
        stored = StoredFile.of(adapter, file)
    return send_stored_file(stored, pinned=label != "latest")


def send_stored_file(stored: StoredFile, *, pinned: bool,
                     headers: dict[str, str] | None = None) -> Response:
    """The response for `stored` (found and access-checked by the caller), counted as a
    download when its bytes go out; `headers` are added (the HF protocol's own)."""
    hub = current_hub()
    url = None
    if request.method != "HEAD":
        url = hub.store.presigned_url(
            stored.blob_key, filename=stored.path, expires_in=hub.settings.presign_ttl,
            cache_control=file_cache_control(stored.visibility, pinned))
    local = hub.store.local_path(stored.blob_key) if url is None else None
    if url is not None:
        response = redirect(url, code=302)
        response.headers["Cache-Control"] = redirect_cache_control(
            stored.visibility, pinned, hub.settings.presign_ttl)
    elif local is None:
        # A HEAD where the store has no local file (S3): a presigned URL is signed for GET
        # only, so the database answers what a HEAD asks.
        response = current_app.response_class(status=200, mimetype=_mimetype(stored.path))
        response.headers["Content-Length"] = str(stored.size)
        response.headers["Cache-Control"] = file_cache_control(stored.visibility, pinned)
    else:
        response = send_file(local, mimetype=_mimetype(stored.path),
                             download_name=stored.path, conditional=True,
                             etag=stored.sha256, max_age=None)
        response.headers["Cache-Control"] = file_cache_control(stored.visibility, pinned)
        response.headers.pop("Expires", None)
    response.headers["ETag"] = f'"{stored.sha256}"'
    response.headers.update(headers or {})
    # Count bytes that went out: not a HEAD, a 304 revalidation or a 416.
    if counts_as_download(stored.path, request.method, request.headers.get("Range"),
                          response.status_code):
        with hub.db.session() as session:
            catalog.record_download(session, stored.adapter_id)
        current_app.extensions["lorastack_metrics"].downloads.inc()
    return response


def _mimetype(path: str) -> str:
    if path.endswith(".json"):
        return "application/json"
    if path.endswith(".md"):
        # Shown as text, never rendered: HTML in a README must not run at the hub's origin.
        # werkzeug appends "; charset=utf-8" to a text/* type itself (a second one if given).
        return "text/plain"
    return "application/octet-stream"


#: A merge's results are its requester's alone: never kept by a shared cache.
PRIVATE = "private, no-store"
# README.md is text/plain (never rendered at the hub's origin); werkzeug adds its charset.
_MERGE_TYPES = {"json": "application/json", "md": "text/plain", "zip": "application/zip"}


def send_merge_file(principal: Principal | None, merge_id: str, path: str, filename: str,
                    *, attachment: bool = False) -> Response:
    """A merge's result file `path` (or its archive) as `filename`, for whoever may see the
    merge: streamed with Range from the local store, a 302 to a presigned URL on S3."""
    hub = current_hub()
    with hub.db.session() as session:
        _, key, _, sha256 = merges.result_file(session, principal, merge_id, path)
    url = hub.store.presigned_url(key, filename=filename, expires_in=hub.settings.presign_ttl,
                                  cache_control=PRIVATE)
    if url is not None:
        response = redirect(url, code=302)
    else:
        mimetype = _MERGE_TYPES.get(filename.rsplit(".", 1)[-1], "application/octet-stream")
        response = send_file(hub.store.local_path(key), mimetype=mimetype,
                             as_attachment=attachment, download_name=filename,
                             conditional=True, etag=sha256, max_age=None)
        response.headers.pop("Expires", None)
    response.headers["ETag"] = f'"{sha256}"'
    response.headers["Cache-Control"] = PRIVATE
    return response
