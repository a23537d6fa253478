"""Merge endpoints: plan, request, read, list, cancel, download, publish."""
from __future__ import annotations

from flask import jsonify, request

from hub.adapter_files import send_merge_file
from hub.api import api_v1
from hub.api.adapters import json_body
from hub.api.auth import current_principal
from hub.runtime import current_hub
from hub.services import merges
from hub.services.access import require_writer
from hub.services.merge_plan import parse_merge_request, plan_merge, plan_view
from hub.services.shapes import merge_view



@api_v1.post("/merges/plan")
def plan_merge_route():
    """Every check a merge would get, and its licence and size; nothing is queued."""
    hub = current_hub()
    principal = current_principal()  # a bad token is 401 before the body is read
    merge_request = parse_merge_request(json_body())
    if merge_request.analyze:
        # It reads the sources' weights in this process: a write token, as for a merge.
        require_writer(principal)
    with hub.db.session() as session:
        result = plan_merge(session, hub.store, hub.settings, principal, merge_request)
        body = plan_view(result)
    if merge_request.analyze:
        from hub.services.merge_analysis import analyze_plan

        body["analysis"] = analyze_plan(hub, result)
    return jsonify(body)


@api_v1.post("/merges")
def create_merge():
    """Queue a merge (202), or return the caller's identical one (200)."""
    hub = current_hub()
    principal = require_writer(current_principal())  # before the body is read
    merge_request = parse_merge_request(json_body())
    with hub.db.session() as session:
        merge, created = merges.request_merge(session, hub.store, hub.settings, principal,
                                              merge_request)
        body = merge_view(merge, queue_position=merges.queue_position(session, merge))
    if created and body["status"] == "queued":
        hub.submit_merge(body["id"])
    return jsonify(body), (202 if created else 200)


@api_v1.get("/merges")
def list_merges():
    """The caller's merges, newest first."""
    limit, cursor = merges.parse_limit(request.args)
    with current_hub().db.session() as session:
        rows, next_cursor = merges.list_merges(session, current_principal(), limit, cursor)
        return jsonify({"items": [merge_view(row, queue_position=merges.queue_position(
            session, row)) for row in rows], "next_cursor": next_cursor})


@api_v1.get("/merges/<merge_id>")
def get_merge(merge_id: str):
    """One merge: status, progress, device, times, error, licence, files, report."""
    with current_hub().db.session() as session:
        merge = merges.get_merge(session, current_principal(), merge_id)
        return jsonify(merge_view(merge, queue_position=merges.queue_position(session, merge)))


@api_v1.delete("/merges/<merge_id>")
def cancel_merge(merge_id: str):
    """Cancel a queued merge, or stop a running one between modules."""
    require_writer(current_principal())
    with current_hub().db.session() as session:
        return jsonify(merge_view(merges.cancel_merge(session, current_principal(), merge_id)))


@api_v1.get("/merges/<merge_id>/archive")
def merge_archive(merge_id: str):
    """The result folder as a zip that unzips to what PeftModel.from_pretrained loads."""
    return send_merge_file(current_principal(), merge_id, merges.ARCHIVE_NAME,
                           f"merge-{merge_id}.zip")


@api_v1.get("/merges/<merge_id>/files/<path:path>")
def merge_file(merge_id: str, path: str):
    """A result file: streamed with Range from the local store, a 302 on S3."""
    return send_merge_file(current_principal(), merge_id, path, path)


@api_v1.post("/merges/<merge_id>/publish")
def publish_merge_route(merge_id: str):
    """Publish the merge's result as a version with `parents` and the derived licence."""
    from hub.services.merge_publish import publish_merge
    from hub.services.shapes import version_view

    hub = current_hub()
    # The owner is named in the body, so only the write scope can be checked before it.
    principal = require_writer(current_principal())
    body = json_body()
    with hub.db.session() as session:
        result = publish_merge(session, hub.store, hub.settings.data_dir / "tmp", principal,
                               merge_id, body)
        view = version_view(result.version, result.adapter, principal)
    return jsonify(view), (201 if result.created else 200)
