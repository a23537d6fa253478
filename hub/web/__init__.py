"""Server-rendered pages: the catalog, adapters, owners, accounts, publishing and their
error pages.

Views parse the request, call hub/services and render a template; the rules (who sees what,
what a licence permits) stay in the services and the licence table. The
Content-Security-Policy of every page is set in hub/app.py.
"""
from __future__ import annotations

from flask import Blueprint, Flask, g

from hub.services.accounts import Principal, web_principal

bp = Blueprint("web", __name__, template_folder="templates")


def register(app: Flask) -> None:
    """Add the pages to `app` (imported here so the views attach to `bp` first)."""
    # Imported for their routes, which register on bp.
    from hub.web import account, catalog, merge, merges, publish  # noqa: F401
    from hub.web.licenses import permissions

    app.register_blueprint(bp)
    app.jinja_env.globals["permissions"] = permissions


def viewer() -> Principal | None:
    """Who is looking at the page: the signed-in user, or None."""
    user = g.get("web_user")
    return None if user is None else web_principal(user)
