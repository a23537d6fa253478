"""Who is calling: the bearer token, resolved once per request."""
from __future__ import annotations

from flask import g, request

from hub.api.limits import count_failed_authentication
from hub.errors import Unauthorized
from hub.runtime import current_hub
from hub.services.access import require_token
from hub.services.accounts import Principal, authenticate


def current_principal() -> Principal | None:
    """The caller, or None when anonymous; a bad token is 401, never anonymous."""
    if "principal" in g:
        return g.principal
    header = request.headers.get("Authorization")
    principal = None
    if header:
        try:
            principal = _authenticate(header)
        except Unauthorized:
            count_failed_authentication()
            raise
    g.principal = principal
    return principal


def require_principal() -> Principal:
    """The caller; 401 when anonymous."""
    return require_token(current_principal())


def _authenticate(header: str) -> Principal:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send the token as `Authorization: Bearer <token>`.")
    with current_hub().db.session() as session:
        return authenticate(session, token.strip())
