"""Small helpers for driving the HTTP API in tests."""
from __future__ import annotations

import io
import json
from pathlib import Path


def auth(token: str | None) -> dict:
    """The Authorization header for `token` (none for None)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch(client, url: str, token: str, headers: dict | None = None):
    """GET a merge file as bytes (following S3's redirect with a real HTTP request)."""
    import requests

    response = client.get(url, headers={**auth(token), **(headers or {})})
    if response.status_code == 302:
        got = requests.get(response.headers["Location"], headers=headers or {}, timeout=30)
        return got.status_code, got.content, response.headers
    return response.status_code, response.data, response.headers


def publish(client, token: str | None, ref: str, version: str, directory: Path | None = None,
            *, license: str | None = "apache-2.0", metadata: dict | str | None = None,
            files: dict[str, bytes] | None = None, **fields):
    """POST a version from `directory` (and/or explicit `files` name -> bytes)."""
    data: dict = {"version": version, **fields}
    if license is not None:
        data["license"] = license
    if metadata is not None:
        data["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
    parts = []
    if directory is not None:
        for path in sorted(Path(directory).iterdir()):
            if path.is_file():
                parts.append((io.BytesIO(path.read_bytes()), path.name))
    for name, content in (files or {}).items():
        parts = [p for p in parts if p[1] != name]
        parts.append((io.BytesIO(content), name))
    data["files"] = parts
    return client.post(f"/api/v1/adapters/{ref}/versions", data=data, headers=auth(token),
                       content_type="multipart/form-data")


def assert_problem(response, status: int, code: str) -> dict:
    """The response is problem+json with this status and code; return the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == code, body
    assert body["status"] == status and body["detail"] and body["title"] and body["type"]
    return body
