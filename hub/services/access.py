"""Who may see and change what: the one place every surface (API, web pages, Hugging Face
endpoint, workers, CLI) asks.

A private adapter is invisible (NotFound, never Forbidden) to everyone but its owner and
admins, in lookups, listings, lineage and merges alike.
"""
from __future__ import annotations

from typing import Hashable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from hub.errors import Forbidden, NotFound, Unauthorized
from hub.models import Adapter, User
from hub.services.accounts import Principal


def visible_clause(principal: Principal | None):
    """SQL condition: adapters the caller may see (private ones only to owner and admins)."""
    if principal is not None and principal.is_admin:
        return True
    if principal is None:
        return Adapter.visibility == "public"
    return or_(Adapter.visibility == "public", Adapter.owner_id == principal.user_id)


def audience(principal: Principal | None) -> Hashable:
    """What visible_clause depends on: callers with the same audience see the same rows."""
    if principal is None:
        return "public"
    if principal.is_admin:
        return "admin"
    return ("user", principal.user_id)


def can_see(principal: Principal | None, adapter: Adapter) -> bool:
    """The same rule as visible_clause, for an adapter already loaded."""
    if adapter.visibility == "public":
        return True
    return principal is not None and (principal.is_admin or principal.user_id == adapter.owner_id)


def require_token(principal: Principal | None) -> Principal:
    """A caller with a token, of any scope; 401 when anonymous."""
    if principal is None:
        raise Unauthorized("This needs a token: send `Authorization: Bearer <token>`.")
    return principal


def can_see_merge(principal: Principal, requester_id: int) -> bool:
    """A merge is its requester's (and the admins'): everyone else gets NotFound."""
    return principal.is_admin or principal.user_id == requester_id


def require_writer(principal: Principal | None) -> Principal:
    """A caller with a write token (merges cost a worker's time)."""
    principal = require_token(principal)
    if not principal.can_write():
        raise Forbidden("This token has the read scope only; use a write token.")
    return principal


def may_change(principal: Principal | None, adapter_owner: str) -> bool:
    """Whether the caller may change `adapter_owner`'s adapters: the rule of require_owner,
    asked without raising (a page shows its owner's controls only to them)."""
    return (principal is not None and principal.can_write()
            and principal.owns(adapter_owner))


def require_owner(principal: Principal | None, adapter_owner: str,
                  session: Session | None = None) -> Principal:
    """The caller, if it may change `adapter_owner`'s adapters with a write token.

    With a `session`, an owner that does not exist is named as such (NotFound), rather
    than a refusal that suggests someone else owns the name.
    """
    principal = require_writer(principal)
    if not principal.owns(adapter_owner):
        if session is not None and session.scalar(
                select(User.id).where(User.name == adapter_owner)) is None:
            raise NotFound(f"No user {adapter_owner}: publish under your own name"
                           f" ({principal.name}/...).")
        raise Forbidden(f"Only {adapter_owner} (or an admin) can change this adapter;"
                        f" your token is {principal.name}'s.")
    return principal
