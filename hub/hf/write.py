"""The write side of the Hugging Face protocol: create_repo, the preupload and commit calls
of upload_file / upload_folder / push_to_hub, and refusals of what would rewrite history.

Every file is answered as a "regular" upload: its bytes come base64-encoded in the commit
body, which the hub decodes to disk as it streams in (hub.hf.ndjson). The pinned
huggingface_hub client sends "lfs" files through Xet whenever hf_xet is installed, with no
way for a server to decline it, and this hub does not speak Xet; regular uploads work with
every client.
"""
from __future__ import annotations

from pathlib import Path

from flask import current_app, jsonify, request

from hub.errors import FileTooLarge, InvalidRequest
from hub.formats import check_file_name
from hub.formats.readme import parse_readme
from hub.hf import hf
from hub.hf.auth import current_principal
from hub.hf.ndjson import parse_commit
from hub.runtime import current_hub
from hub.services.access import require_owner, require_writer
from hub.services.commit_publish import IMMUTABLE, create_adapter, publish_commit
from hub.services.commits import MAIN, version_commit
from hub.services.publish import Upload


@hf.post("/api/repos/create")
def create_repo():
    """Create an adapter with no version yet; 409 (with its URL) when it exists."""
    body = _json()
    if body.get("type", "model") != "model":
        raise InvalidRequest("This hub holds models (LoRA adapters) only.")
    principal = require_writer(current_principal())  # before the owner it names by default
    owner = body.get("organization") or principal.name
    name = body.get("name")
    if not isinstance(name, str) or not isinstance(owner, str):
        raise InvalidRequest("Send {'name': <adapter name>, 'organization': <owner>}.")
    private = body.get("visibility") == "private" or body.get("private") is True
    with current_hub().db.session() as session:
        adapter, created = create_adapter(session, principal, owner, name, private)
        repo = f"{adapter.owner.name}/{adapter.name}"
    url = f"{request.host_url}{repo}"
    if not created:
        response = jsonify({"error": f"{repo} already exists.", "url": url})
        response.status_code = 409
        return response
    return jsonify({"url": url, "name": repo, "id": repo})


@hf.post("/api/validate-yaml")
def validate_yaml():
    """Check a model card's front matter as publish will read it."""
    content = _json().get("content")
    if not isinstance(content, str):
        raise InvalidRequest("Send {'content': <README text>}.")
    try:
        parse_readme(content.encode())
    except InvalidRequest as exc:
        response = jsonify({"errors": [{"message": exc.detail}], "warnings": []})
        response.status_code = 400
        return response
    return jsonify({"errors": [], "warnings": []})


@hf.post("/api/models/<owner>/<name>/preupload/<revision>")
def preupload(owner: str, name: str, revision: str):
    """Every file is a regular upload; a file no adapter holds is refused here already."""
    _require_writer(owner, revision)
    files = _json().get("files")
    if not isinstance(files, list):
        raise InvalidRequest("Send {'files': [{'path', 'size', 'sample'}]}.")
    answer = []
    for item in files:
        path = item.get("path") if isinstance(item, dict) else None
        check_file_name(path if isinstance(path, str) else "")
        answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                       "oid": None})
    return jsonify({"files": answer, "commitOid": None})


@hf.post("/api/models/<owner>/<name>/commit/<revision>")
def commit(owner: str, name: str, revision: str):
    """Publish the commit as a new version (or answer the latest when nothing changed)."""
    hub = current_hub()
    _require_writer(owner, revision)
    limit = hub.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise FileTooLarge(f"The commit is larger than this hub accepts ({limit} bytes;"
                           " LORASTACK_MAX_UPLOAD_BYTES).")
    request.max_content_length = limit
    body = parse_commit(request.stream, str(hub.settings.data_dir / "tmp"))
    try:
        if body.lfs_files:
            raise InvalidRequest("This hub takes files as regular uploads only (its preupload"
                                 " answer says so); upgrade huggingface_hub or send the files"
                                 " again.")
        added = []
        for path, temp in body.files.items():
            check_file_name(path)
            temp.file.flush()
            added.append(Upload(name=path, path=Path(temp.name), size=temp.size,
                                sha256=temp.hexdigest()))
        with hub.db.session() as session:
            result = publish_commit(session, hub.store, current_principal(), owner, name,
                                    added, body.deletions, hub.settings.data_dir / "tmp")
            oid = version_commit(result.version)
            size = result.version.size_bytes
    finally:
        body.close()
    if result.created:
        metrics = current_app.extensions["lorastack_metrics"]
        metrics.uploads.inc()
        metrics.upload_bytes.inc(size)
    return jsonify({"success": True, "commitOid": oid, "pullRequestUrl": None,
                    "commitUrl": f"{request.host_url}{owner}/{name}/commit/{oid}",
                    "hookOutput": ""})


@hf.route("/api/models/<owner>/<name>/super-squash/<path:branch>", methods=["POST"])
@hf.route("/api/models/<owner>/<name>/tag/<path:tag>", methods=["POST", "DELETE"])
@hf.route("/api/models/<owner>/<name>/branch/<path:branch>", methods=["POST", "DELETE"])
def rewrite_history(owner: str, name: str, **_ref):
    """Tags are version labels and `main` follows the versions: none of it is edited."""
    _require_writer(owner, MAIN)
    raise InvalidRequest(f"{IMMUTABLE} Tags are the version labels and `main` is the newest"
                         " version that is not yanked.", status=409)


@hf.route("/api/repos/delete", methods=["DELETE"])
@hf.route("/api/repos/move", methods=["POST"])
def delete_or_move():
    """Adapters are neither deleted nor renamed through this protocol."""
    raise InvalidRequest(f"{IMMUTABLE} Adapters are not deleted or renamed here.", status=409)


def _require_writer(owner: str, revision: str) -> None:
    """A write token of `owner` (or an admin), before any body is read; commits go to main."""
    with current_hub().db.session() as session:
        require_owner(current_principal(), owner, session)
    if revision != MAIN:
        raise InvalidRequest(f"Commit to `main` (not {revision!r}): each commit publishes a"
                             " new version, labelled by the README's `version:` or the next"
                             " integer.")


def _json() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object (Content-Type: application/json).")
    return body
