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
from hub.api.openapi_merges import merge_paths, merge_schemas
from hub.api.openapi_schema import (JSON_MEDIA, PROBLEM_MEDIA, nullable, obj, ok, params,
                                    problems, ref, string)
from hub.services.names import TAG_RE, VERSION_RE

def _schemas() -> dict:
    file = obj({"path": string(), "size": {"type": "integer", "minimum": 0},
                    "sha256": string(pattern="^[0-9a-f]{64}$")}, ["path", "size", "sha256"])
    time = string(format="date-time")
    summary = obj({
        "id": string("owner/name"), "owner": string(), "name": string(),
        "description": string(), "base_model": nullable(string()),
        "license": nullable(string()), "tags": {"type": "array", "items": string()},
        "task": nullable(string()), "latest_version": nullable(string()),
        "downloads": {"type": "integer"}, "created_at": time, "updated_at": time,
        "visibility": string(enum=["public", "private"]),
    }, ["id", "owner", "name", "latest_version", "visibility"])
    version = obj({
        "adapter": string("owner/name"), "version": string(), "created_at": time,
        "license": string(), "license_name": string(), "license_link": string(),
        "base_model": nullable(string()), "peft_type": string(),
        "task_type": nullable(string()), "r": nullable({"type": "integer"}),
        "lora_alpha": nullable({"type": "number"}),
        "target_modules": {"type": "array", "items": string()},
        "num_parameters": {"type": "integer"}, "size_bytes": {"type": "integer"},
        "mergeable": {"type": "boolean"},
        "not_mergeable_reason": nullable(string("Why the merge engine refuses it.")),
        "yanked": {"type": "boolean"},
        "yank_reason": nullable(string()), "files": {"type": "array", "items": ref("File")},
        "parents": {"type": "array", "items": obj(
            {"adapter": string(), "version": string(), "weight": {"type": "number"}})},
        "children": {"type": "array", "items": obj(
            {"adapter": string(), "version": string()})},
    }, ["adapter", "version", "license", "files", "mergeable", "yanked"])
    detail = {"allOf": [ref("AdapterSummary"), obj(
        {"versions": {"type": "array", "items": ref("Version")}}, ["versions"])]}
    license_ = obj({
        "id": string(), "name": string(), "url": nullable(string()),
        "spdx": nullable(string()), "commercial_use": {"type": "boolean"},
        "derivatives": string(enum=["allowed", "share-alike", "forbidden"]),
        "attribution": {"type": "boolean"}, "use_restrictions": {"type": "boolean"},
    }, ["id", "name", "derivatives"])
    problem = obj({
        "type": string(format="uri"), "title": string(), "status": {"type": "integer"},
        "detail": string("What went wrong and what to do about it."),
        "code": string("Stable machine-readable code.", enum=sorted(HubError.by_code)),
    }, ["type", "title", "status", "detail", "code"])
    metadata = obj({
        "description": string(maxLength=10_000),
        "tags": {"type": "array", "items": string(pattern=TAG_RE.pattern), "maxItems": 32,
                 "description": "Duplicates are folded; the order is kept."},
        "task": string(maxLength=64),
        "base_model": string(maxLength=256),
        "visibility": string(enum=["public", "private"]),
    }, additionalProperties=False)
    token = obj({"prefix": string(), "scope": string(enum=["read", "write"]),
                 "created_at": time, "last_used_at": nullable(time),
                 "revoked": {"type": "boolean"}},
                ["prefix", "scope", "created_at", "last_used_at", "revoked"])
    return {"File": file, "AdapterSummary": summary, "AdapterDetail": detail,
            "Version": version, "License": license_, "Problem": problem,
            "Metadata": metadata, "Token": token}


def _adapter_paths() -> dict:
    adapter = params("owner", "name")
    version = params("owner", "name", "version")
    version_json = ok("The version.", ref("Version"))
    list_params = [
        {"name": key, "in": "query", "required": False, "schema": schema,
         "description": text}
        for key, schema, text in (
            ("search", string(maxLength=256),
             "Words (letters and digits, any case or accents; everything else separates"
             " them), at most 8: an adapter matches when each starts a word of its name,"
             " a tag or its description."),
            ("base_model", string(maxLength=256), "Exact base model (any case)."),
            ("license", string(), "A licence id (any case, SPDX aliases)."),
            ("tag", string(), "A tag."), ("task", string(), "A task."),
            ("owner", string(), "An owner's name."),
            ("sort", string(enum=["relevance", "downloads", "created", "updated", "name"]),
             "Order of the results. Default: relevance when search has words, else"
             " downloads. relevance: per search word 4 for the name, 2 for a tag, 1 for"
             " the description, summed; then downloads, then id (all descending)."),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
             "Page size."),
            ("cursor", string(), "next_cursor of the previous page (same sort)."))]
    return {
        "/adapters": {"get": {
            "operationId": "listAdapters", "summary": "Search and browse adapters",
            "description": "Every catalog write shows in the next listing; download counts"
                           " in a listing may be up to LORASTACK_CATALOG_CACHE_SECONDS old.",
            "parameters": list_params,
            "responses": {**ok("One page of adapters the caller can see.", obj({
                "items": {"type": "array", "items": ref("AdapterSummary")},
                "next_cursor": nullable(string())}, ["items", "next_cursor"])),
                **problems(400)}}},
        "/adapters/{owner}/{name}": {
            "parameters": adapter,
            "get": {"operationId": "getAdapter", "summary": "An adapter and its versions",
                    "responses": {**ok("The adapter, versions newest first.",
                                        ref("AdapterDetail")), **problems(404)}},
            "patch": {"operationId": "patchAdapter",
                      "summary": "Change description, tags, task or visibility (owner)",
                      "security": [{"bearer": []}],
                      "requestBody": {"required": True, "content": {
                          JSON_MEDIA: {"schema": ref("Metadata")}}},
                      "responses": {**ok("The adapter.", ref("AdapterDetail")),
                                    **problems(400, 401, 403, 404, 413)}}},
        "/adapters/{owner}/{name}/versions": {
            "parameters": adapter,
            "post": {
                "operationId": "publishVersion", "summary": "Publish a version (write token)",
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": obj({
                        "version": string(pattern=VERSION_RE.pattern),
                        "license": string("A licence id from /licenses."),
                        "license_name": string("With license `other`."),
                        "license_link": string("With license `other`."),
                        "metadata": string("A JSON object (see Metadata)."),
                        "files": {"type": "array", "items": string(
                            contentMediaType="application/octet-stream"),
                            "description": "adapter_config.json, adapter_model.safetensors,"
                                           " optional README.md; each part's filename is"
                                           " the file's name."},
                    }, ["version", "files"])}}},
                "responses": {**ok("Published.", ref("Version"), "201"),
                              **ok("The identical version existed already.", ref("Version")),
                              **problems(400, 401, 403, 404, 409, 413, 415, 422, 503)}}},
        "/adapters/{owner}/{name}/versions/{version}": {
            "parameters": version,
            "get": {"operationId": "getVersion", "summary": "One version",
                    "responses": {**version_json, **problems(404)}}},
        "/adapters/{owner}/{name}/versions/{version}/yank": {
            "parameters": version,
            "post": {"operationId": "yankVersion",
                     "summary": "Hide a version from `latest` (owner); it stays downloadable",
                     "security": [{"bearer": []}],
                     "requestBody": {"required": False, "content": {JSON_MEDIA: {"schema": obj(
                         {"reason": string(maxLength=1000)})}}},
                     "responses": {**version_json, **problems(400, 401, 403, 404, 413)}}},
        "/adapters/{owner}/{name}/versions/{version}/unyank": {
            "parameters": version,
            "post": {"operationId": "unyankVersion", "summary": "Undo a yank (owner)",
                     "security": [{"bearer": []}],
                     "responses": {**version_json, **problems(400, 401, 403, 404)}}},
        "/adapters/{owner}/{name}/versions/{version}/files/{path}": {
            "parameters": params("owner", "name", "version", "path"),
            "get": {"operationId": "downloadFile",
                    "summary": "A file's bytes (Range, ETag = sha256), or a 302 to a signed"
                               " URL when the store is S3",
                    "responses": {
                        "200": {"description": "The bytes.", "content": {
                            "application/octet-stream": {"schema": string(
                                contentMediaType="application/octet-stream")}}},
                        "206": {"description": "The requested range."},
                        "302": {"description": "Redirect to a short-lived signed URL."},
                        "304": {"description": "Not modified (If-None-Match)."},
                        **problems(404, 416)}}},
    }


def _service_paths() -> dict:
    return {
        "/health": {"get": {
            "operationId": "health", "summary": "Database and storage status",
            "responses": {**ok("All parts are up.", obj(
                {"status": string(), "database": string(), "storage": string(),
                 "version": string()}, ["status", "database", "storage", "version"])),
                "503": {"description": "A part is down; it is named."}}}},
        "/whoami": {"get": {
            "operationId": "whoami", "summary": "The caller", "security": [{"bearer": []}],
            "responses": {**ok("The caller's name, admin flag and scopes.", obj(
                {"name": string(), "is_admin": {"type": "boolean"},
                 "scopes": {"type": "array", "items": string()}})), **problems(401)}}},
        "/tokens": {"get": {
            "operationId": "listTokens", "summary": "The caller's tokens (never the tokens"
                                                    " themselves: their prefixes)",
            "security": [{"bearer": []}],
            "responses": {**ok("Live tokens, oldest first.", obj(
                {"items": {"type": "array", "items": ref("Token")}}, ["items"])),
                **problems(401)}}},
        "/tokens/{prefix}": {"delete": {
            "operationId": "revokeToken",
            "summary": "Revoke one of the caller's tokens (write token); refused at once",
            "security": [{"bearer": []}],
            "parameters": [{"name": "prefix", "in": "path", "required": True,
                            "schema": string("A token's prefix, as GET /tokens shows it.")}],
            "responses": {**ok("The revoked token.", ref("Token")),
                          **problems(400, 401, 403, 404)}}},
        "/licenses": {"get": {
            "operationId": "listLicenses", "summary": "The licence table and its flags",
            "responses": ok("Every licence id.", obj(
                {"items": {"type": "array", "items": ref("License")}}, ["items"]))}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document",
            "responses": ok("OpenAPI 3.1.", {"type": "object"})}},
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
        "paths": {**_service_paths(), **_adapter_paths(), **merge_paths()},
        "components": {
            "schemas": {**_schemas(), **merge_schemas()},
            "responses": {f"P{status}": {"description": f"Error ({status}).", "content": {
                PROBLEM_MEDIA: {"schema": ref("Problem")}}} for status in statuses},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `lorastack users create` or `tokens create`."}},
        },
    }


@api_v1.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 description of this API."""
    return jsonify(openapi_document())
