"""The read side of the Hugging Face protocol: model info, listings, trees, refs, whoami and
`resolve` downloads, over the same services as the API."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import current_app, jsonify, request

from hub.adapter_files import StoredFile, send_stored_file
from hub.errors import InvalidRequest, NotFound, StorageUnavailable
from hub.formats.readme import DEFAULT_MAX_README_BYTES, parse_front_matter
from hub.hf import hf
from hub.hf.auth import current_principal
from hub.hf.errors import ENTRY_NOT_FOUND, REPO_NOT_FOUND, REVISION_NOT_FOUND, missing_is
from hub.hf.shapes import commit_entry, model_info, model_summary, refs, tree_entry
from hub.models import Adapter, Version, VersionFile
from hub.runtime import current_hub
from hub.services import catalog
from hub.services.access import require_token
from hub.services.browse import card_file
from hub.services.commits import MAIN, find_revision, version_commit

# The Hub's sort names -> the catalog's.
_SORTS = {"downloads": "downloads", "likes": "downloads", "trendingScore": "downloads",
          "lastModified": "updated", "last_modified": "updated", "createdAt": "created",
          "created_at": "created", "id": "name", "modelId": "name"}
# Tags every adapter here carries (hub.hf.shapes.repo_tags): as a filter they select all.
_IMPLIED_TAGS = {"peft", "safetensors", "lora"}


def find_adapter(session, owner: str, name: str) -> Adapter:
    """The adapter if the caller may see it; RepoNotFound otherwise (private included)."""
    with missing_is(REPO_NOT_FOUND):
        return catalog.get_adapter(session, current_principal(), owner, name)


def find_version(adapter: Adapter, revision: str) -> Version:
    """The version a revision names; RevisionNotFound otherwise."""
    version = find_revision(adapter, revision)
    if version is None:
        with missing_is(REVISION_NOT_FOUND):
            if revision == MAIN:
                raise NotFound(f"{_repo(adapter)} has no version that is not yanked; ask for"
                               " a version label as the revision.")
            raise NotFound(f"{_repo(adapter)} has no version (revision) {revision!r}; its"
                           " versions are the tags of `list_repo_refs`.")
    return version


@hf.get("/api/whoami-v2")
def whoami():
    """The token's user, in the Hub's shape."""
    principal = require_token(current_principal())
    role = "write" if principal.can_write() else "read"
    return jsonify({"type": "user", "id": str(principal.user_id), "name": principal.name,
                    "fullname": principal.name, "isPro": False, "canPay": False,
                    "emailVerified": False, "avatarUrl": "", "orgs": [],
                    "auth": {"type": "access_token",
                             "accessToken": {"displayName": "lorastack", "role": role}},
                    "isAdmin": principal.is_admin})


@hf.get("/api/models")
def list_models():
    """The catalog's search, in the Hub's shape, paged by `Link: <...>; rel="next"`."""
    args = {"search": request.args.get("search"), "owner": request.args.get("author"),
            "task": request.args.get("pipeline_tag"), "cursor": request.args.get("cursor")}
    if "sort" in request.args:
        sort = request.args["sort"]
        if sort not in _SORTS:
            raise InvalidRequest(f"Unknown sort {sort!r}: use one of {', '.join(_SORTS)}.")
        args["sort"] = _SORTS[sort]
    if "limit" in request.args:
        try:
            args["limit"] = str(min(int(request.args["limit"]), catalog.MAX_LIMIT))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer.") from None
    args.update(_filters(request.args.getlist("filter")))
    query = catalog.parse_query({key: value for key, value in args.items() if value})
    principal, hub = current_principal(), current_hub()

    def page() -> tuple[bytes, str | None]:
        rows, next_cursor = catalog.search_adapters(session, principal, query)
        latest = catalog.latest_versions(session, rows)
        models = [model_summary(row, latest.get(row.id)) for row in rows]
        return current_app.json.response(models).get_data(), next_cursor

    with hub.db.session() as session:
        body, next_cursor = hub.listings.get(session, principal, ("hf", query.key), page)
    response = current_app.response_class(body, mimetype="application/json")
    if next_cursor:
        params = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
        next_url = f"{request.base_url}?{urlencode(params + [('cursor', next_cursor)])}"
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


def _filters(values: list[str]) -> dict:
    """The Hub's `filter` values as catalog parameters: `license:X`, `base_model:...:X`,
    a task, or one tag."""
    out: dict = {}
    tags = []
    for value in values:
        if value in _IMPLIED_TAGS:
            continue
        if value.startswith("license:"):
            out["license"] = value.removeprefix("license:")
        elif value.startswith("base_model:"):
            out["base_model"] = value.removeprefix("base_model:").removeprefix("adapter:")
        else:
            tags.append(value)
    if len(tags) > 1:
        raise InvalidRequest(f"Filter by one tag at a time (got {', '.join(tags)}); licence"
                             " and base model filters (license:X, base_model:X) combine with it.")
    if tags:
        out["tag"] = tags[0]
    return out


@hf.get("/api/models/<owner>/<name>")
@hf.get("/api/models/<owner>/<name>/revision/<revision>")
def get_model(owner: str, name: str, revision: str | None = None):
    """ModelInfo of a revision (`main` by default): commit id, files, card data."""
    blobs = request.args.get("blobs", "").lower() in ("1", "true")
    with current_hub().db.session() as session:
        adapter = find_adapter(session, owner, name)
        if revision in (None, MAIN) and not adapter.versions:
            return jsonify(model_info(adapter, None, card_data=None, blobs=blobs))
        version = find_version(adapter, revision or MAIN)
        info = model_info(adapter, version, card_data=None, blobs=blobs)
        readme = card_file(version)
    # The store is read after the session: a slow store holds no database connection.
    card_data = _card_data(readme)
    if card_data is not None:
        info["cardData"] = card_data
    return jsonify(info)


def _card_data(readme: VersionFile | None) -> dict | None:
    """The README's front matter, the Hub's `cardData`; None without a README, or when
    the store cannot give it (the rest of the model info still answers)."""
    if readme is None or readme.size > DEFAULT_MAX_README_BYTES:
        return None
    try:
        with current_hub().store.open_read(readme.blob_key) as stream:
            text = stream.read(DEFAULT_MAX_README_BYTES).decode("utf-8", "replace")
    except (StorageUnavailable, NotFound):  # the store is down, or lost the blob
        return None
    # Checked when it was published; a front matter read back is as it was then.
    return parse_front_matter(text.removeprefix("\ufeff")) or None


@hf.get("/api/models/<owner>/<name>/tree/<revision>")
@hf.get("/api/models/<owner>/<name>/tree/<revision>/<path:path>")
def tree(owner: str, name: str, revision: str, path: str = ""):
    """The files of a revision (a version's files are all at its top level)."""
    with current_hub().db.session() as session:
        adapter = find_adapter(session, owner, name)
        if revision == MAIN and not adapter.versions:
            return jsonify([])  # created by create_repo, nothing published yet
        version = find_version(adapter, revision)
        if path.strip("/"):
            # No folders: a path is a file, which the Hub's tree does not list.
            with missing_is(ENTRY_NOT_FOUND):
                raise NotFound(f"{owner}/{name}@{version.label} has no folder {path!r}.")
        return jsonify([tree_entry(file) for file in version.files])


@hf.post("/api/models/<owner>/<name>/paths-info/<revision>")
def paths_info(owner: str, name: str, revision: str):
    """The entries of the paths asked for that the revision holds (others are left out)."""
    wanted = set(request.form.getlist("paths"))
    with current_hub().db.session() as session:
        version = find_version(find_adapter(session, owner, name), revision)
        return jsonify([tree_entry(file) for file in version.files if file.path in wanted])


@hf.get("/api/models/<owner>/<name>/commits/<revision>")
def commits(owner: str, name: str, revision: str):
    """The history of a revision: its version and every older one, newest first."""
    with current_hub().db.session() as session:
        adapter = find_adapter(session, owner, name)
        version = find_version(adapter, revision)
        return jsonify([commit_entry(adapter, v) for v in adapter.versions
                        if (v.created_at, v.id) <= (version.created_at, version.id)])


@hf.get("/api/models/<owner>/<name>/refs")
def list_refs(owner: str, name: str):
    """`main` and one tag per version label, with their commit ids."""
    with current_hub().db.session() as session:
        return jsonify(refs(find_adapter(session, owner, name)))


@hf.route("/<owner>/<name>/resolve/<revision>/<path:path>", methods=["GET", "HEAD"])
def resolve(owner: str, name: str, revision: str, path: str):
    """A file's bytes with the headers the client relies on; on S3, GET is a 302 to a
    presigned URL (HEAD answers from the database, so the client's GET comes here and is
    counted)."""
    with current_hub().db.session() as session:
        adapter = find_adapter(session, owner, name)
        if revision == MAIN and not adapter.versions:
            with missing_is(ENTRY_NOT_FOUND):  # a new card is written, as on an empty repo
                raise NotFound(f"{owner}/{name} has no version yet, so no file {path!r}.")
        version = find_version(adapter, revision)
        file = next((f for f in version.files if f.path == path), None)
        commit = version_commit(version)
        if file is None:
            error = NotFound(f"{owner}/{name}@{version.label} has no file {path!r}.")
            error.hf_error_code = ENTRY_NOT_FOUND
            error.repo_commit = commit
            raise error
        stored = StoredFile.of(adapter, file)
    return send_stored_file(stored, pinned=revision not in (MAIN, "latest"), headers={
        "X-Repo-Commit": commit, "X-Linked-Etag": f'"{stored.sha256}"',
        "X-Linked-Size": str(stored.size), "Accept-Ranges": "bytes"})


def _repo(adapter: Adapter) -> str:
    return f"{adapter.owner.name}/{adapter.name}"
