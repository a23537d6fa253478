"""Small builders for the OpenAPI document's schemas and responses (hub.api.openapi)."""
from __future__ import annotations

from hub.services.names import NAME_RE, USER_RE, VERSION_RE

JSON_MEDIA = "application/json"
PROBLEM_MEDIA = "application/problem+json"


def ref(name: str) -> dict:
    """A reference to a schema of the document."""
    return {"$ref": f"#/components/schemas/{name}"}


def string(description: str | None = None, **extra) -> dict:
    """A string schema."""
    schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def nullable(schema: dict) -> dict:
    """`schema` or null."""
    return {"oneOf": [schema, {"type": "null"}]}


def obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    """An object schema."""
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def ok(description: str, schema: dict, status: str = "200", media: str = JSON_MEDIA) -> dict:
    """A success response with a body."""
    return {status: {"description": description, "content": {media: {"schema": schema}}}}


def problems(*statuses: int) -> dict:
    """The problem+json responses of these statuses."""
    return {str(status): {"$ref": f"#/components/responses/P{status}"} for status in statuses}


_PATH_PARAMS = {
    "owner": string("The owning user's name.", pattern=USER_RE.pattern),
    "name": string("The adapter's name.", pattern=NAME_RE.pattern),
    "version": string("A version label, or `latest` (the newest version not yanked).",
                       pattern=VERSION_RE.pattern),
    "path": string("A file of the version, e.g. adapter_model.safetensors."),
}


def params(*names: str) -> list[dict]:
    """Path parameters by name."""
    return [{"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]}
            for name in names]
