"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json.

Written by hand beside the routes (docs/api.md is the prose contract); a test checks that
it is a valid OpenAPI document and that its paths and methods are exactly the routes.
"""
from __future__ import annotations

from functools import lru_cache

from flask import jsonify

from hub import __version__
from hub.api import api_v1
from hub.errors import HubError
from hub.services.names import NAME_RE, TAG_RE, USER_RE, VERSION_RE

_JSON = "application/json"
_PROBLEM = "application/problem+json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str | None = None, **extra) -> dict:
    schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: dict) -> dict:
    return {"oneOf": [schema, {"type": "null"}]}


def _object(properties: dict, required: list[str] | None = None, **extra) -> dict:
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def _ok(description: str, schema: dict, status: str = "200", media: str = _JSON) -> dict:
    return {status: {"description": description, "content": {media: {"schema": schema}}}}


def _problems(*statuses: int) -> dict:
    return {str(status): {"$ref": f"#/components/responses/P{status}"} for status in statuses}


_PATH_PARAMS = {
    "owner": _string("The owning user's name.", pattern=USER_RE.pattern),
    "name": _string("The adapter's name.", pattern=NAME_RE.pattern),
    "version": _string("A version label, or `latest` (the newest version not yanked).",
                       pattern=VERSION_RE.pattern),
    "path": _string("A file of the version, e.g. adapter_model.safetensors."),
}


def _params(*names: str) -> list[dict]:
    return [{"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]}
            for name in names]


def _schemas() -> dict:
    file = _object({"path": _string(), "size": {"type": "integer", "minimum": 0},
                    "sha256": _string(pattern="^[0-9a-f]{64}$")}, ["path", "size", "sha256"])
    time = _string(format="date-time")
    summary = _object({
        "id": _string("owner/name"), "owner": _string(), "name": _string(),
        "description": _string(), "base_model": _nullable(_string()),
        "license": _nullable(_string()), "tags": {"type": "array", "items": _string()},
        "task": _nullable(_string()), "latest_version": _nullable(_string()),
        "downloads": {"type": "integer"}, "created_at": time, "updated_at": time,
        "visibility": _string(enum=["public", "private"]),
    }, ["id", "owner", "name", "latest_version", "visibility"])
    version = _object({
        "adapter": _string("owner/name"), "version": _string(), "created_at": time,
        "license": _string(), "license_name": _string(), "license_link": _string(),
        "base_model": _nullable(_string()), "peft_type": _string(),
        "task_type": _nullable(_string()), "r": _nullable({"type": "integer"}),
        "lora_alpha": _nullable({"type": "number"}),
        "target_modules": {"type": "array", "items": _string()},
        "num_parameters": {"type": "integer"}, "size_bytes": {"type": "integer"},
        "mergeable": {"type": "boolean"},
        "not_mergeable_reason": _nullable(_string("Why the merge engine refuses it.")),
        "yanked": {"type": "boolean"},
        "yank_reason": _nullable(_string()), "files": {"type": "array", "items": _ref("File")},
        "parents": {"type": "array", "items": _object(
            {"adapter": _string(), "version": _string(), "weight": {"type": "number"}})},
        "children": {"type": "array", "items": _object(
            {"adapter": _string(), "version": _string()})},
    }, ["adapter", "version", "license", "files", "mergeable", "yanked"])
    detail = {"allOf": [_ref("AdapterSummary"), _object(
        {"versions": {"type": "array", "items": _ref("Version")}}, ["versions"])]}
    license_ = _object({
        "id": _string(), "name": _string(), "url": _nullable(_string()),
        "spdx": _nullable(_string()), "commercial_use": {"type": "boolean"},
        "derivatives": _string(enum=["allowed", "share-alike", "forbidden"]),
        "attribution": {"type": "boolean"}, "use_restrictions": {"type": "boolean"},
    }, ["id", "name", "derivatives"])
    problem = _object({
        "type": _string(format="uri"), "title": _string(), "status": {"type": "integer"},
        "detail": _string("What went wrong and what to do about it."),
        "code": _string("Stable machine-readable code.", enum=sorted(HubError.by_code)),
    }, ["type", "title", "status", "detail", "code"])
    metadata = _object({
        "description": _string(maxLength=10_000),
        "tags": {"type": "array", "items": _string(pattern=TAG_RE.pattern), "maxItems": 32,
                 "description": "Duplicates are folded; the order is kept."},
        "task": _string(maxLength=64),
        "base_model": _string(maxLength=256),
        "visibility": _string(enum=["public", "private"]),
    }, additionalProperties=False)
    return {"File": file, "AdapterSummary": summary, "AdapterDetail": detail,
            "Version": version, "License": license_, "Problem": problem,
            "Metadata": metadata}


def _adapter_paths() -> dict:
    adapter = _params("owner", "name")
    version = _params("owner", "name", "version")
    version_json = _ok("The version.", _ref("Version"))
    list_params = [
        {"name": key, "in": "query", "required": False, "schema": schema,
         "description": text}
        for key, schema, text in (
            ("search", _string(maxLength=256), "Text in the name, description or tags."),
            ("base_model", _string(maxLength=256), "Exact base model (any case)."),
            ("license", _string(), "A licence id (any case, SPDX aliases)."),
            ("tag", _string(), "A tag."), ("task", _string(), "A task."),
            ("owner", _string(), "An owner's name."),
            ("sort", _string(enum=["downloads", "created", "updated", "name"],
                             default="downloads"), "Order of the results."),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
             "Page size."),
            ("cursor", _string(), "next_cursor of the previous page (same sort)."))]
    return {
        "/adapters": {"get": {
            "operationId": "listAdapters", "summary": "Search and browse adapters",
            "parameters": list_params,
            "responses": {**_ok("One page of adapters the caller can see.", _object({
                "items": {"type": "array", "items": _ref("AdapterSummary")},
                "next_cursor": _nullable(_string())}, ["items", "next_cursor"])),
                **_problems(400)}}},
        "/adapters/{owner}/{name}": {
            "parameters": adapter,
            "get": {"operationId": "getAdapter", "summary": "An adapter and its versions",
                    "responses": {**_ok("The adapter, versions newest first.",
                                        _ref("AdapterDetail")), **_problems(404)}},
            "patch": {"operationId": "patchAdapter",
                      "summary": "Change description, tags, task or visibility (owner)",
                      "security": [{"bearer": []}],
                      "requestBody": {"required": True, "content": {
                          _JSON: {"schema": _ref("Metadata")}}},
                      "responses": {**_ok("The adapter.", _ref("AdapterDetail")),
                                    **_problems(400, 401, 403, 404)}}},
        "/adapters/{owner}/{name}/versions": {
            "parameters": adapter,
            "post": {
                "operationId": "publishVersion", "summary": "Publish a version (write token)",
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": _object({
                        "version": _string(pattern=VERSION_RE.pattern),
                        "license": _string("A licence id from /licenses."),
                        "license_name": _string("With license `other`."),
                        "license_link": _string("With license `other`."),
                        "metadata": _string("A JSON object (see Metadata)."),
                        "files": {"type": "array", "items": _string(
                            contentMediaType="application/octet-stream"),
                            "description": "adapter_config.json, adapter_model.safetensors,"
                                           " optional README.md; each part's filename is"
                                           " the file's name."},
                    }, ["version", "files"])}}},
                "responses": {**_ok("Published.", _ref("Version"), "201"),
                              **_ok("The identical version existed already.", _ref("Version")),
                              **_problems(400, 401, 403, 404, 409, 413, 415, 422, 503)}}},
        "/adapters/{owner}/{name}/versions/{version}": {
            "parameters": version,
            "get": {"operationId": "getVersion", "summary": "One version",
                    "responses": {**version_json, **_problems(404)}}},
        "/adapters/{owner}/{name}/versions/{version}/yank": {
            "parameters": version,
            "post": {"operationId": "yankVersion",
                     "summary": "Hide a version from `latest` (owner); it stays downloadable",
                     "security": [{"bearer": []}],
                     "requestBody": {"required": False, "content": {_JSON: {"schema": _object(
                         {"reason": _string(maxLength=1000)})}}},
                     "responses": {**version_json, **_problems(400, 401, 403, 404)}}},
        "/adapters/{owner}/{name}/versions/{version}/unyank": {
            "parameters": version,
            "post": {"operationId": "unyankVersion", "summary": "Undo a yank (owner)",
                     "security": [{"bearer": []}],
                     "responses": {**version_json, **_problems(400, 401, 403, 404)}}},
        "/adapters/{owner}/{name}/versions/{version}/files/{path}": {
            "parameters": _params("owner", "name", "version", "path"),
            "get": {"operationId": "downloadFile",
                    "summary": "A file's bytes (Range, ETag = sha256), or a 302 to a signed"
                               " URL when the store is S3",
                    "responses": {
                        "200": {"description": "The bytes.", "content": {
                            "application/octet-stream": {"schema": _string(
                                contentMediaType="application/octet-stream")}}},
                        "206": {"description": "The requested range."},
                        "302": {"description": "Redirect to a short-lived signed URL."},
                        "304": {"description": "Not modified (If-None-Match)."},
                        **_problems(404, 416)}}},
    }


def _merge_paths() -> dict:
    merge_id = [{"name": "merge_id", "in": "path", "required": True,
                 "schema": _string("A merge's id.", pattern="^[0-9a-f]{32}$")}]
    spec_body = {"required": True, "content": {_JSON: {"schema": _ref("MergeSpec")}}}
    merge_json = _ok("The merge.", _ref("Merge"))
    file_response = {
        "200": {"description": "The bytes (Range, ETag = sha256).", "content": {
            "application/octet-stream": {"schema": _string(
                contentMediaType="application/octet-stream")}}},
        "206": {"description": "The requested range."},
        "302": {"description": "Redirect to a short-lived signed URL (S3)."},
        "304": {"description": "Not modified (If-None-Match)."},
        "410": {"$ref": "#/components/responses/P410"},
        **_problems(401, 404, 416)}
    return {
        "/merges/plan": {"post": {
            "operationId": "planMerge",
            "summary": "Every check a merge gets, its derived licence and output size;"
                       " with analyze, how the sources' updates interact",
            "requestBody": spec_body,
            "responses": {**_ok("The plan.", _ref("MergePlan")),
                          **_problems(400, 401, 403, 404, 422)}}},
        "/merges": {
            "post": {"operationId": "createMerge", "summary": "Queue a merge (write token)",
                     "security": [{"bearer": []}], "requestBody": spec_body,
                     "responses": {**_ok("Queued (or answered from the cache).",
                                         _ref("Merge"), "202"),
                                   **_ok("The caller's identical merge.", _ref("Merge")),
                                   **_problems(400, 401, 403, 404, 422, 429)}},
            "get": {"operationId": "listMerges", "summary": "The caller's merges, newest first",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                        {"name": "cursor", "in": "query", "required": False,
                         "schema": _string()}],
                    "responses": {**_ok("One page.", _object({
                        "items": {"type": "array", "items": _ref("Merge")},
                        "next_cursor": _nullable(_string())}, ["items", "next_cursor"])),
                        **_problems(400, 401)}}},
        "/merges/{merge_id}": {
            "parameters": merge_id,
            "get": {"operationId": "getMerge", "summary": "One merge (its requester, admins)",
                    "security": [{"bearer": []}],
                    "responses": {**merge_json, **_problems(401, 404)}},
            "delete": {"operationId": "cancelMerge",
                       "summary": "Cancel a queued merge; stop a running one between modules",
                       "security": [{"bearer": []}],
                       "responses": {**merge_json, **_problems(401, 404)}}},
        "/merges/{merge_id}/files/{path}": {
            "parameters": merge_id + _params("path"),
            "get": {"operationId": "downloadMergeFile", "summary": "A result file",
                    "security": [{"bearer": []}], "responses": file_response}},
        "/merges/{merge_id}/archive": {
            "parameters": merge_id,
            "get": {"operationId": "downloadMergeArchive",
                    "summary": "The result as a zip that PeftModel.from_pretrained loads"
                               " once unzipped", "security": [{"bearer": []}],
                    "responses": file_response}},
        "/merges/{merge_id}/publish": {
            "parameters": merge_id,
            "post": {"operationId": "publishMerge",
                     "summary": "Publish a LoRA result as a version with parents",
                     "security": [{"bearer": []}],
                     "requestBody": {"required": True, "content": {_JSON: {"schema": _object({
                         "adapter": _string("owner/name"),
                         "version": _string(pattern=VERSION_RE.pattern),
                         "license_link": _string("Needed when the derived licence is a"
                                                 " combination ('other') without a link."),
                         "description": _string(maxLength=10_000),
                         "visibility": _string(enum=["public", "private"])},
                         ["adapter", "version"], additionalProperties=False)}}},
                     "responses": {**_ok("Published.", _ref("Version"), "201"),
                                   **_ok("The identical version existed.", _ref("Version")),
                                   **_problems(400, 401, 403, 404, 409, 410, 422)}}},
    }


def _merge_schemas() -> dict:
    source = _object({"adapter": _string("owner/name"),
                      "version": _string("A label or latest.", default="latest"),
                      "weight": {"type": "number", "default": 1.0}}, ["adapter"],
                     additionalProperties=False)
    spec = _object({
        "sources": {"type": "array", "items": source, "minItems": 1},
        "method": _string(enum=["linear", "ties", "dare_linear", "dare_ties",
                                "magnitude_prune", "svd", "cat", "ties_svd",
                                "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"],
                          default="linear"),
        "rank": _nullable({"type": "integer", "minimum": 1}),
        "density": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "majority_sign_method": _string(enum=["total", "frequency"], default="total"),
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "output": _string(enum=["lora", "delta"], default="lora"),
        "dtype": _nullable(_string(enum=["float16", "bfloat16", "float32"])),
        "analyze": {"type": "boolean", "default": False,
                    "description": "Plan only: norms and cosines of the sources' updates."},
    }, ["sources"], additionalProperties=False)
    file = _ref("File")
    merge = _object({
        "id": _string(), "status": _string(enum=["queued", "running", "succeeded", "failed",
                                                  "cancelled"]),
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "modules": {"type": "integer"}, "spec": {"type": "object"},
        **{key: _nullable(_string(format="date-time")) for key in (
            "created_at", "started_at", "finished_at", "expires_at")},
        "expired": {"type": "boolean"}, "device": _nullable(_string()),
        "attempts": {"type": "integer"}, "cancel_requested": {"type": "boolean"},
        "error": _nullable(_object({"code": _string(), "detail": _string()})),
        "license": {"type": "object"}, "output_bytes": {"type": "integer"},
        "files": {"type": "array", "items": file}, "archive": _nullable(file),
        "report": _nullable({"type": "object"}),
        "published": _nullable(_object({"adapter": _string(), "version": _string()})),
    }, ["id", "status", "progress", "spec", "created_at", "files"])
    plan = _object({
        "sources": {"type": "array", "items": _object({
            "adapter": _string(), "version": _string(), "sha256": _string(),
            "weight": {"type": "number"}, "license": _string()})},
        "license": {"type": "object"}, "modules": {"type": "integer"},
        "output_bytes": {"type": "integer"}, "source_bytes": {"type": "integer"},
        "dtype": _string(), "spec": {"type": "object"}, "cache_key": _string(),
        "analysis": {"type": "object"},
    }, ["sources", "license", "modules", "output_bytes"])
    return {"MergeSpec": spec, "Merge": merge, "MergePlan": plan}


def _service_paths() -> dict:
    return {
        "/health": {"get": {
            "operationId": "health", "summary": "Database and storage status",
            "responses": {**_ok("All parts are up.", _object(
                {"status": _string(), "database": _string(), "storage": _string(),
                 "version": _string()}, ["status", "database", "storage", "version"])),
                "503": {"description": "A part is down; it is named."}}}},
        "/whoami": {"get": {
            "operationId": "whoami", "summary": "The caller", "security": [{"bearer": []}],
            "responses": {**_ok("The caller's name, admin flag and scopes.", _object(
                {"name": _string(), "is_admin": {"type": "boolean"},
                 "scopes": {"type": "array", "items": _string()}})), **_problems(401)}}},
        "/licenses": {"get": {
            "operationId": "listLicenses", "summary": "The licence table and its flags",
            "responses": _ok("Every licence id.", _object(
                {"items": {"type": "array", "items": _ref("License")}}, ["items"]))}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document",
            "responses": _ok("OpenAPI 3.1.", {"type": "object"})}},
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    """The whole OpenAPI 3.1 document (built once per process)."""
    statuses = (400, 401, 403, 404, 409, 410, 413, 415, 416, 422, 429, 503)
    return {
        "openapi": "3.1.0",
        "info": {"title": "lorastack API", "version": __version__,
                 "description": "A registry and merge hub for LoRA adapters. Errors are"
                                " application/problem+json with a stable `code`."},
        "servers": [{"url": "/api/v1"}],
        "paths": {**_service_paths(), **_adapter_paths(), **_merge_paths()},
        "components": {
            "schemas": {**_schemas(), **_merge_schemas()},
            "responses": {f"P{status}": {"description": f"Error ({status}).", "content": {
                _PROBLEM: {"schema": _ref("Problem")}}} for status in statuses},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `lorastack users create` or `tokens create`."}},
        },
    }


@api_v1.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 description of this API."""
    return jsonify(openapi_document())
