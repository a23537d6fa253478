"""An adapter's file sent over HTTP: one response, and one download count, for the API's
bearer-token route and the pages' signed-in route (the HF protocol adds its own headers).

Streamed with Range from the local store, a 302 to a presigned URL on S3; Cache-Control by
hub.services.downloads, so a private file is never kept by a shared cache.
"""
from __future__ import annotations

from flask import Response, current_app, redirect, request, send_file

from hub.runtime import current_hub
from hub.services import catalog
from hub.services.accounts import Principal
from hub.services.downloads import (counts_as_download, file_cache_control,
                                    redirect_cache_control)


def send_adapter_file(principal: Principal | None, owner: str, name: str, label: str,
                      path: str) -> Response:
    """The bytes of owner/name@label's `path`, as `principal` may see them (404 otherwise)."""
    hub = current_hub()
    with hub.db.session() as session:
        adapter, _version, file = catalog.get_file(session, principal, owner, name, label, path)
    pinned = label != "latest"
    url = hub.store.presigned_url(
        file.blob_key, filename=file.path, expires_in=hub.settings.presign_ttl,
        cache_control=file_cache_control(adapter.visibility, pinned))
    if url is not None:
        response = redirect(url, code=302)
        response.headers["ETag"] = f'"{file.sha256}"'
        response.headers["Cache-Control"] = redirect_cache_control(
            adapter.visibility, pinned, hub.settings.presign_ttl)
    else:
        local = hub.store.local_path(file.blob_key)
        response = send_file(local, mimetype=_mimetype(file.path), download_name=file.path,
                             conditional=True, etag=file.sha256, max_age=None)
        response.headers["Cache-Control"] = file_cache_control(adapter.visibility, pinned)
        response.headers.pop("Expires", None)
    # Count bytes that went out: not a HEAD, a 304 revalidation or a 416.
    if counts_as_download(path, request.method, request.headers.get("Range"),
                          response.status_code):
        with hub.db.session() as session:
            catalog.record_download(session, adapter.id)
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
