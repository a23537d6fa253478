"""One's merges on the pages: the list, a merge's status and progress, its downloads, its
publishing and cancelling; through the merge services, as the signed-in user.

A merge's page polls /merges/{id}/status (the API's Merge) with its script while the merge
is queued or running; the downloads are the API's merge files, for their requester only.
"""
from __future__ import annotations

from urllib.parse import quote

from flask import g, jsonify, redirect, render_template, request, url_for

from hub.adapter_files import send_merge_file
from hub.errors import HubError, Unauthorized
from hub.licenses import OTHER
from hub.runtime import current_hub
from hub.services import merges
from hub.services.shapes import merge_view
from hub.web import bp, viewer
from hub.web.account import sign_in_redirect
from hub.web.errors import script_problem as problem, web_safe

ACTIVE = ("queued", "running")


# --- one's merges -------------------------------------------------------------------------


@bp.get("/merges")
def merges_page():
    """The signed-in user's merges, newest first, a keyset page at a time."""
    if g.web_user is None:
        return sign_in_redirect()
    cursor = request.args.get("cursor") or None
    with current_hub().db.session() as session:
        rows, next_cursor = merges.list_merges(session, viewer(), 50, cursor)
        items = [merge_view(row, queue_position=merges.queue_position(session, row))
                 for row in rows]
    return render_template("merge/list.html", merges=items, next_cursor=next_cursor)


@bp.get("/merges/<merge_id>")
def merge_page(merge_id: str):
    """One merge: its status and progress, then its downloads and the publish form."""
    if g.web_user is None:
        return sign_in_redirect()
    return _merge_page(merge_id, {}, {})


@bp.get("/merges/<merge_id>/status")
def merge_status(merge_id: str):
    """The merge as the API shows it, for the page's script to poll."""
    if g.web_user is None:
        return problem(Unauthorized("Sign in to see your merges."))
    try:
        return jsonify(_view(merge_id))
    except HubError as error:
        return problem(error)


@bp.post("/merges/<merge_id>/cancel")
def merge_cancel(merge_id: str):
    """Cancel a queued merge, or ask a running one to stop; back to its page."""
    if g.web_user is None:
        return sign_in_redirect(url_for("web.merge_page", merge_id=merge_id))
    with current_hub().db.session() as session:
        merges.cancel_merge(session, viewer(), merge_id)
    return redirect(url_for("web.merge_page", merge_id=merge_id), code=303)


#: Which field of the publish form an error of the publish service concerns.
PUBLISH_FIELD_OF_CODE = {"invalid_name": "name", "invalid_version": "version",
                         "version_exists": "version", "invalid_metadata": "description"}


@bp.post("/merges/<merge_id>/publish")
def merge_publish(merge_id: str):
    """Publish the merge's result as the user's adapter, then go to its page."""
    from hub.services.merge_publish import publish_merge

    if g.web_user is None:
        return sign_in_redirect(url_for("web.merge_page", merge_id=merge_id))
    typed = {key: request.form.get(key, "").strip() for key in
             ("name", "version", "license_link", "description", "visibility")}
    body = {"adapter": f"{g.web_user.name}/{typed['name']}", "version": typed["version"]}
    body.update({key: typed[key] for key in ("license_link", "description", "visibility")
                 if typed[key]})
    hub = current_hub()
    try:
        with hub.db.session() as session:
            result = publish_merge(session, hub.store, hub.settings.data_dir / "tmp", viewer(),
                                   merge_id, body)
            owner, name = result.adapter.owner.name, result.adapter.name
            label = result.version.label
    except HubError as error:
        error = web_safe(error)
        where = PUBLISH_FIELD_OF_CODE.get(error.code)
        if where is None and "license_link" in error.detail:
            where = "license_link"
        return _merge_page(merge_id, typed, {where or "publish": error.detail}), error.status
    return redirect(f"/{quote(owner)}/{quote(name)}/v/{quote(label, safe='')}", code=303)


@bp.get("/merges/<merge_id>/archive")
def merge_archive_download(merge_id: str):
    """The result folder as a zip, for its requester (the API's merge archive)."""
    return _download(merge_id, merges.ARCHIVE_NAME, f"merge-{merge_id}.zip")


@bp.get("/merges/<merge_id>/files/<path:path>")
def merge_file_download(merge_id: str, path: str):
    """One result file, for its requester (the API's merge file)."""
    return _download(merge_id, path, path)


def _view(merge_id: str) -> dict:
    with current_hub().db.session() as session:
        merge = merges.get_merge(session, viewer(), merge_id)
        view = merge_view(merge, queue_position=merges.queue_position(session, merge))
        view["private_sources"] = any(s.version.adapter.visibility != "public"
                                      for s in merge.sources)
    return view


def _merge_page(merge_id: str, typed: dict, errors: dict[str, str]):
    merge = _view(merge_id)
    license_ = merge.get("license") or {}
    default_name = "-".join(s["adapter"].split("/")[1] for s in merge["spec"]["sources"])[:60]
    form = {"name": default_name or "merged", "version": "1.0.0", "license_link": "",
            "description": "", "visibility": "private" if merge["private_sources"] else "public",
            **{key: value for key, value in typed.items() if value}}
    publishable = (merge["status"] == "succeeded" and not merge["expired"]
                   and merge["spec"].get("output") == "lora")
    return render_template("merge/merge.html", merge=merge, form=form, errors=errors,
                           active=merge["status"] in ACTIVE, publishable=publishable,
                           needs_link=license_.get("id") == OTHER and not license_.get("license_link"))


def _download(merge_id: str, path: str, filename: str):
    if g.web_user is None:
        return sign_in_redirect(url_for("web.merge_page", merge_id=merge_id))
    return send_merge_file(viewer(), merge_id, path, filename, attachment=True)
