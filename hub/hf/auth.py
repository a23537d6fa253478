"""The caller of a Hugging Face protocol request: `Authorization: Bearer <token>`, which is
what `HF_TOKEN` makes the client send; a lorastack token of any scope."""
from __future__ import annotations

from flask import current_app, g, request

from hub.errors import Unauthorized
from hub.runtime import current_hub
from hub.services.accounts import Principal, authenticate

#: Where hub.api.limits keeps the app's counters (a bad token counts against its address).
_LIMITS_KEY = "lorastack.limits"


def current_principal() -> Principal | None:
    """The caller, or None when anonymous; a bad token is 401, never anonymous."""
    if "principal" in g:
        return g.principal
    header = request.headers.get("Authorization")
    principal = None
    if header:
        scheme, _, token = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("Send the token as `Authorization: Bearer <token>`"
                                   " (HF_TOKEN=<lorastack token>).")
            with current_hub().db.session() as session:
                principal = authenticate(session, token.strip())
        except Unauthorized:
            limits = current_app.extensions.get(_LIMITS_KEY)
            if limits is not None:
                limits.count_failed_authentication(request.remote_addr or "-")
            raise
    g.principal = principal
    return principal
