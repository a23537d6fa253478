"""Who is calling the API: the bearer token, resolved once per request (hub.caller)."""
from __future__ import annotations

from hub.caller import current_principal
from hub.services.access import require_token
from hub.services.accounts import Principal

__all__ = ["current_principal", "require_principal"]


def require_principal() -> Principal:
    """The caller; 401 when anonymous."""
    return require_token(current_principal())
