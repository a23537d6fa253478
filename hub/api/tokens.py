"""The caller's own API tokens: list them, revoke one."""
from __future__ import annotations

from flask import jsonify

from hub.api import api_v1
from hub.api.auth import current_principal, require_principal
from hub.models import Token
from hub.runtime import current_hub
from hub.services.access import require_writer
from hub.services.accounts import list_tokens, revoke_token


def token_json(token: Token) -> dict:
    """A token as the API shows it: never the token, only its prefix."""
    return {"prefix": token.prefix, "scope": token.scope,
            "created_at": token.created_at.isoformat(),
            "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
            "revoked": token.revoked}


@api_v1.get("/tokens")
def tokens():
    """The caller's tokens that are not revoked, oldest first."""
    principal = require_principal()
    with current_hub().db.session() as session:
        return jsonify({"items": [token_json(token)
                                  for token in list_tokens(session, principal.user_id)]})


@api_v1.delete("/tokens/<prefix>")
def revoke(prefix: str):
    """Revoke one of the caller's tokens; a write token is needed, so a leaked read token
    cannot lock its owner out."""
    principal = require_writer(current_principal())
    with current_hub().db.session() as session:
        return jsonify(token_json(revoke_token(session, prefix, user_id=principal.user_id)))
