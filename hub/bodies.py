"""Which routes take a large body, and what a caller shows before one is read.

Every other body is a small JSON object (LORASTACK_MAX_JSON_BYTES). One list, read by the
app's own limit (hub.app), by the server's gate that answers before a body is read
(hub.cli.serving) and by the surfaces that own the routes: the API's publish, the Hugging
Face protocol's commit and the publish page.
"""
from __future__ import annotations

#: Endpoint names that accept up to LORASTACK_MAX_UPLOAD_BYTES.
UPLOAD_ENDPOINTS = frozenset({"api_v1.publish", "hf.commit", "web.publish"})

#: The sign-in cookie of the web pages (set in hub.web.account).
SESSION_COOKIE = "lorastack_session"


def shows_credentials(headers: dict, endpoint: str) -> bool:
    """Whether a large body's request names a caller at all: a bearer token, or on the
    publish page the sign-in cookie. Checked from the headers alone, before any body byte
    (whether they are valid is the route's own check, once the body has arrived)."""
    if headers.get("AUTHORIZATION"):
        return True
    if endpoint == "web.publish":
        return f"{SESSION_COOKIE}=" in headers.get("COOKIE", "")
    return False
