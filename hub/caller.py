"""Who is calling, by bearer token: resolved once per request for the surfaces that take one
(the API and the Hugging Face protocol) and for the rate limits that run before them."""
from __future__ import annotations

from flask import g, request

from hub.errors import Unauthorized
from hub.limits import count_failed_authentication
from hub.runtime import current_hub
from hub.services.accounts import Principal, authenticate_header


def current_principal(*, how: str = "") -> Principal | None:
    """The caller, or None when anonymous; a bad token is 401, never anonymous, and counts
    against the caller's address. `how` names a surface's own way to send a token."""
    if "principal" in g:
        return g.principal
    header = request.headers.get("Authorization")
    principal = None
    if header:
        try:
            with current_hub().db.session() as session:
                principal = authenticate_header(session, header, how=how)
        except Unauthorized:
            count_failed_authentication()
            raise
    g.principal = principal
    return principal
