"""Service endpoints: health, whoami, licences."""
from __future__ import annotations

from flask import jsonify

from hub import __version__
from hub.api import api_v1
from hub.api.auth import current_principal, require_principal
from hub.api.problems import api_safe
from hub.runtime import current_hub
from hub.errors import HubError
from hub.licenses import list_licenses


@api_v1.get("/health")
def health():
    """Report the database and the store; 503 naming the part that is down."""
    hub = current_hub()
    try:
        current_principal()  # a token holder is shown a failing part's cause
    except HubError:
        pass  # a bad token, or the database is down: the health answer is still given
    body = {"status": "ok", "database": "ok", "storage": "ok", "version": __version__}
    failed = None
    for part, check in (("database", hub.db.check), ("storage", hub.store.check)):
        try:
            check()
        except HubError as error:
            body[part] = "unavailable"
            body[f"{part}_detail"] = api_safe(error).detail
            failed = failed or error
    if failed is not None:
        body.update(status="unavailable", code=failed.code)
        return jsonify(body), 503
    return jsonify(body)


@api_v1.get("/whoami")
def whoami():
    """The caller's name, admin flag and scopes."""
    principal = require_principal()
    return jsonify({"name": principal.name, "is_admin": principal.is_admin,
                    "scopes": list(principal.scopes)})


@api_v1.get("/licenses")
def licenses():
    """The licence table with its permission flags."""
    return jsonify({"items": [item.to_dict() for item in list_licenses()]})
