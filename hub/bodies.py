"""Which routes take a large body, and what a caller shows before one is read.

Every other body is a small JSON object (LORASTACK_MAX_JSON_BYTES). One list, read by the
app's own limit (hub.app), by the server's gate that answers before a body is read
(hub.cli.serving) and by the surfaces that own the routes: the API's publish, the Hugging
Face protocol's commit and the publish page.
"""
from __future__ import annotations

from typing import Callable

from itsdangerous import BadSignature
from werkzeug.http import parse_cookie

from hub.services.accounts import TOKEN_SHAPE

#: Endpoint names that accept up to LORASTACK_MAX_UPLOAD_BYTES.
UPLOAD_ENDPOINTS = frozenset({"api_v1.publish", "hf.commit", "web.publish"})

#: The sign-in cookie of the web pages (set in hub.web.account).
SESSION_COOKIE = "lorastack_session"

#: Whether a sign-in cookie's value is one this app signed for a user (see session_check).
SessionCheck = Callable[[str], bool]


def session_check(app) -> SessionCheck:
    """A check of a sign-in cookie's value with `app`'s own session signer: its signature,
    its age (the session's lifetime) and that it names a user. No database: a user deleted,
    or a password changed since, still passes here, and is refused by the route."""
    serializer = app.session_interface.get_signing_serializer(app)
    max_age = int(app.permanent_session_lifetime.total_seconds())

    def signed_in(value: str) -> bool:
        if serializer is None:  # no secret key: no session is ever valid
            return False
        try:
            data = serializer.loads(value, max_age=max_age)
        except BadSignature:  # a forged, altered or expired cookie
            return False
        return isinstance(data, dict) and data.get("uid") is not None

    return signed_in


def shows_credentials(headers: dict, endpoint: str, signed_in: SessionCheck) -> bool:
    """Whether a large body's request shows credentials that could be valid, from its
    headers alone, before any body byte: a bearer token of the hub's own form
    (accounts.TOKEN_SHAPE), or on the publish page a sign-in cookie this hub signed for a
    user. Whether the token exists, and the user still does, is the route's own check once
    the body has arrived."""
    scheme, _, token = headers.get("AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and TOKEN_SHAPE.fullmatch(token.strip()):
        return True
    if endpoint == "web.publish":
        value = parse_cookie(headers.get("COOKIE", "")).get(SESSION_COOKIE)
        return value is not None and signed_in(value)
    return False
