"""Cross-site request forgery: every unsafe request to the pages carries the session's token.

A page that could change something (a form, or the publish page's upload) sends the token
that its session was given, as the form field `csrf_token` or the header `X-CSRF-Token`;
another site can make a browser send the cookie, but cannot read the token. The API under
/api/v1 is outside this: it authenticates with bearer tokens only, never with the cookie.
"""
from __future__ import annotations

import hmac
import secrets

from flask import request, session

from hub.errors import Forbidden

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SESSION_KEY = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token() -> str:
    """This session's token (created on first use); forms put it in a hidden field."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = session[SESSION_KEY] = secrets.token_urlsafe(32)
    return token


def new_token() -> str:
    """A fresh token: after sign-in a token seen before it no longer works."""
    token = session[SESSION_KEY] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Forbidden unless an unsafe request carries this session's token."""
    if request.method in SAFE_METHODS:
        return
    expected = session.get(SESSION_KEY)
    # The header first: the publish page's script sends it, and a form field would mean
    # reading the whole multipart body before refusing it.
    sent = request.headers.get(HEADER) or request.form.get(FIELD)
    if not (isinstance(expected, str) and expected and isinstance(sent, str)
            and hmac.compare_digest(expected.encode(), sent.encode())):
        raise Forbidden("This form was not sent from this hub's page, or the page is older"
                        " than your sign-in: reload the page and send it again.")
