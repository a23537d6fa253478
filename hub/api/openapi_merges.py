"""The merge endpoints' part of the OpenAPI document (hub.api.openapi builds the whole)."""
from __future__ import annotations

from hub.api.openapi_schema import JSON_MEDIA, nullable, obj, ok, params, problems, ref, string
from hub.services.names import VERSION_RE


def merge_paths() -> dict:
    """The /merges paths of the OpenAPI document."""
    merge_id = [{"name": "merge_id", "in": "path", "required": True,
                 "schema": string("A merge's id.", pattern="^[0-9a-f]{32}$")}]
    spec_body = {"required": True, "content": {JSON_MEDIA: {"schema": ref("MergeSpec")}}}
    merge_json = ok("The merge.", ref("Merge"))
    file_response = {
        "200": {"description": "The bytes (Range, ETag = sha256).", "content": {
            "application/octet-stream": {"schema": string(
                contentMediaType="application/octet-stream")}}},
        "206": {"description": "The requested range."},
        "302": {"description": "Redirect to a short-lived signed URL (S3)."},
        "304": {"description": "Not modified (If-None-Match)."},
        "410": {"$ref": "#/components/responses/P410"},
        **problems(401, 404, 416)}
    return {
        "/merges/plan": {"post": {
            "operationId": "planMerge",
            "summary": "Every check a merge gets, its derived licence and output size;"
                       " with analyze, how the sources' updates interact",
            "requestBody": spec_body,
            "responses": {**ok("The plan.", ref("MergePlan")),
                          **problems(400, 401, 403, 404, 413, 422)}}},
        "/merges": {
            "post": {"operationId": "createMerge", "summary": "Queue a merge (write token)",
                     "security": [{"bearer": []}], "requestBody": spec_body,
                     "responses": {**ok("Queued (or answered from the cache).",
                                         ref("Merge"), "202"),
                                   **ok("The caller's identical merge.", ref("Merge")),
                                   **problems(400, 401, 403, 404, 413, 422, 429)}},
            "get": {"operationId": "listMerges", "summary": "The caller's merges, newest first",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                        {"name": "cursor", "in": "query", "required": False,
                         "schema": string()}],
                    "responses": {**ok("One page.", obj({
                        "items": {"type": "array", "items": ref("Merge")},
                        "next_cursor": nullable(string())}, ["items", "next_cursor"])),
                        **problems(400, 401)}}},
        "/merges/{merge_id}": {
            "parameters": merge_id,
            "get": {"operationId": "getMerge", "summary": "One merge (its requester, admins)",
                    "security": [{"bearer": []}],
                    "responses": {**merge_json, **problems(401, 404)}},
            "delete": {"operationId": "cancelMerge",
                       "summary": "Cancel a queued merge; stop a running one between modules",
                       "security": [{"bearer": []}],
                       "responses": {**merge_json, **problems(401, 403, 404)}}},
        "/merges/{merge_id}/files/{path}": {
            "parameters": merge_id + params("path"),
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
                     "requestBody": {"required": True, "content": {JSON_MEDIA: {"schema": obj({
                         "adapter": string("owner/name"),
                         "version": string(pattern=VERSION_RE.pattern),
                         "license_link": string("Needed when the derived licence is a"
                                                 " combination ('other') without a link."),
                         "description": string(maxLength=10_000),
                         "visibility": string(enum=["public", "private"])},
                         ["adapter", "version"], additionalProperties=False)}}},
                     "responses": {**ok("Published.", ref("Version"), "201"),
                                   **ok("The identical version existed.", ref("Version")),
                                   **problems(400, 401, 403, 404, 409, 410, 413, 422)}}},
    }


def merge_schemas() -> dict:
    """MergeSpec, Merge and MergePlan."""
    source = obj({"adapter": string("owner/name"),
                      "version": string("A label or latest.", default="latest"),
                      "weight": {"type": "number", "default": 1.0}}, ["adapter"],
                     additionalProperties=False)
    spec = obj({
        "sources": {"type": "array", "items": source, "minItems": 1},
        "method": string(enum=["linear", "ties", "dare_linear", "dare_ties",
                                "magnitude_prune", "svd", "cat", "ties_svd",
                                "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"],
                          default="linear"),
        "rank": nullable({"type": "integer", "minimum": 1}),
        "density": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "majority_sign_method": string(enum=["total", "frequency"], default="total"),
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "output": string(enum=["lora", "delta"], default="lora"),
        "dtype": nullable(string(enum=["float16", "bfloat16", "float32"])),
        "analyze": {"type": "boolean", "default": False,
                    "description": "Plan only: norms and cosines of the sources' updates."},
    }, ["sources"], additionalProperties=False)
    file = ref("File")
    merge = obj({
        "id": string(), "status": string(enum=["queued", "running", "succeeded", "failed",
                                                  "cancelled"]),
        "queue_position": nullable({"type": "integer", "minimum": 1}),
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "modules": {"type": "integer"}, "spec": {"type": "object"},
        **{key: nullable(string(format="date-time")) for key in (
            "created_at", "started_at", "finished_at", "expires_at")},
        "expired": {"type": "boolean"}, "device": nullable(string()),
        "attempts": {"type": "integer"}, "cancel_requested": {"type": "boolean"},
        "error": nullable(obj({"code": string(), "detail": string()})),
        "license": {"type": "object"}, "output_bytes": {"type": "integer"},
        "files": {"type": "array", "items": file}, "archive": nullable(file),
        "report": nullable({"type": "object"}),
        "published": nullable(obj({"adapter": string(), "version": string()})),
    }, ["id", "status", "progress", "spec", "created_at", "files"])
    plan = obj({
        "sources": {"type": "array", "items": obj({
            "adapter": string(), "version": string(), "sha256": string(),
            "weight": {"type": "number"}, "license": string()})},
        "license": {"type": "object"}, "modules": {"type": "integer"},
        "output_bytes": {"type": "integer"}, "source_bytes": {"type": "integer"},
        "dtype": string(), "spec": {"type": "object"}, "cache_key": string(),
        "analysis": {"type": "object"},
    }, ["sources", "license", "modules", "output_bytes"])
    return {"MergeSpec": spec, "Merge": merge, "MergePlan": plan}


