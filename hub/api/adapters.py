"""Adapter endpoints: thin, parse -> service -> JSON."""
from __future__ import annotations

from flask import current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from hub.api import api_v1
from hub.api.auth import current_principal
from hub.adapter_files import send_adapter_file
from hub.api.uploads import MalformedForm
from hub.runtime import current_hub
from hub.errors import InvalidRequest, InvalidVersion, UnexpectedFile
from hub.formats import check_file_name
from hub.services import catalog
from hub.services.access import require_owner
from hub.services.names import parse_metadata
from hub.services.publish import LicenseChoice, Upload, publish_version
from hub.services.shapes import adapter_detail, adapter_summary, version_view

FORM_FIELDS = {"version", "license", "license_name", "license_link", "metadata"}


@api_v1.get("/adapters")
def list_adapters():
    """Search and browse, one keyset page at a time."""
    query = catalog.parse_query(request.args)
    principal, hub = current_principal(), current_hub()

    def page() -> bytes:
        rows, next_cursor = catalog.search_adapters(session, principal, query)
        return current_app.json.response({"items": [adapter_summary(row) for row in rows],
                                          "next_cursor": next_cursor}).get_data()

    with hub.db.session() as session:
        body = hub.listings.get(session, principal, ("api", query.key), page)
    return current_app.response_class(body, mimetype="application/json")


@api_v1.get("/adapters/<owner>/<name>")
def get_adapter(owner: str, name: str):
    """An adapter and its versions, newest first."""
    principal, hub = current_principal(), current_hub()

    def view() -> tuple[int, dict]:
        adapter = catalog.get_adapter(session, principal, owner, name)
        return adapter.id, adapter_detail(adapter, principal)

    with hub.db.session() as session:
        adapter_id, detail = hub.listings.get(session, principal, ("api-detail", owner, name),
                                              view)
        downloads = catalog.download_count(session, adapter_id)
    return jsonify({**detail, "downloads": downloads})


@api_v1.patch("/adapters/<owner>/<name>")
def patch_adapter(owner: str, name: str):
    """Change description, tags, task or visibility."""
    _require_adapter_owner(owner, name)
    changes = json_body()
    with current_hub().db.session() as session:
        adapter = catalog.update_adapter(session, current_principal(), owner, name, changes)
        return jsonify(adapter_detail(adapter, current_principal()))


@api_v1.post("/adapters/<owner>/<name>/versions")
def publish(owner: str, name: str):
    """Publish a version from a multipart upload (201), or find the identical one (200)."""
    hub = current_hub()
    principal = current_principal()
    # Checked again by the service; here it refuses before a multi-GB body is parsed.
    with hub.db.session() as session:
        require_owner(principal, owner, session)
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("Send a version as multipart/form-data: the fields version,"
                             " license, metadata and each file as a part named 'files'.",
                             status=415)
    try:
        form, files = request.form, request.files
    except MalformedForm as exc:
        raise InvalidRequest(f"The body is not valid multipart/form-data ({exc}); send the"
                             " fields and files as multipart parts.") from None
    if "files" in form:  # werkzeug files a part without a filename under form
        raise UnexpectedFile("Each 'files' part needs a filename (Content-Disposition:"
                             ' form-data; name="files"; filename="adapter_config.json").')
    repeated = sorted(field for field in form if len(form.getlist(field)) > 1)
    if repeated:
        raise InvalidRequest(f"Form field(s) sent more than once: {', '.join(repeated)};"
                             " send each once.")
    unknown = sorted(set(form) - FORM_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown form field(s): {', '.join(unknown)}; send"
                             f" {', '.join(sorted(FORM_FIELDS))} and the files as 'files'.")
    stray = sorted(set(files) - {"files"})
    if stray:
        raise UnexpectedFile(f"Send every file as a part named 'files' (got {', '.join(stray)}).")
    uploads = []
    for part in files.getlist("files"):
        check_file_name(part.filename or "")
        stream = part.stream
        stream.flush()
        uploads.append(Upload(name=part.filename, path=stream.name, size=stream.size,
                              sha256=stream.hexdigest()))
    if not form.get("version"):
        raise InvalidVersion("The form field 'version' is required (for example 1.0.0).")
    metadata = parse_metadata(form.get("metadata"))
    choice = LicenseChoice(form.get("license") or None, form.get("license_name") or None,
                           form.get("license_link") or None)
    with hub.db.session() as session:
        result = publish_version(session, hub.store, principal, owner, name,
                                 form["version"], uploads, choice, metadata)
        body = version_view(result.version, result.adapter, principal)
    if result.created:
        metrics = current_app.extensions["lorastack_metrics"]
        metrics.uploads.inc()
        metrics.upload_bytes.inc(body["size_bytes"])
    return jsonify(body), (201 if result.created else 200)


@api_v1.get("/adapters/<owner>/<name>/versions/<version>")
def get_version(owner: str, name: str, version: str):
    """One version; `latest` is the newest not yanked."""
    with current_hub().db.session() as session:
        adapter, row = catalog.get_version(session, current_principal(), owner, name, version)
        return jsonify(version_view(row, adapter, current_principal()))


@api_v1.post("/adapters/<owner>/<name>/versions/<version>/yank")
def yank(owner: str, name: str, version: str):
    """Yank a version: `latest` skips it, its label still downloads."""
    _require_adapter_owner(owner, name)
    body = json_body(optional=True)
    with current_hub().db.session() as session:
        adapter, row = catalog.yank_version(session, current_principal(), owner, name, version,
                                            body.get("reason"))
        return jsonify(version_view(row, adapter, current_principal()))


@api_v1.post("/adapters/<owner>/<name>/versions/<version>/unyank")
def unyank(owner: str, name: str, version: str):
    """Undo a yank: the version counts for `latest` again."""
    _require_adapter_owner(owner, name)
    with current_hub().db.session() as session:
        adapter, row = catalog.unyank_version(session, current_principal(), owner, name,
                                              version)
        return jsonify(version_view(row, adapter, current_principal()))


@api_v1.get("/adapters/<owner>/<name>/versions/<version>/files/<path:path>")
def download(owner: str, name: str, version: str, path: str):
    """The bytes of a file: streamed with Range from the local store, a 302 on S3."""
    return send_adapter_file(current_principal(), owner, name, version, path)


def _require_adapter_owner(owner: str, name: str) -> None:
    """Refuse a caller who may not change owner/name before its body is read: 404 for an
    adapter it cannot see (never 403 for a private one), else 401/403 without write access."""
    principal = current_principal()
    with current_hub().db.session() as session:
        catalog.get_adapter(session, principal, owner, name)
    require_owner(principal, owner)


def json_body(optional: bool = False) -> dict:
    """The request's JSON object body; InvalidRequest for anything else."""
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        # werkzeug stops a body sent without a length at the limit and hands back what
        # it read, which would parse as a truncated (400) body rather than a large one.
        raise RequestEntityTooLarge()
    if optional and not data:
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # json raises it, not ValueError, for deep nesting
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object (Content-Type: application/json).")
    return body
