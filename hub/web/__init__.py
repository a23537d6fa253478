"""Server-rendered pages: the catalog, adapters, owners and their error pages.

Views parse the request, call hub/services and render a template; the rules (who sees what,
what a licence permits) stay in the services and the licence table.
"""
from __future__ import annotations

from flask import Blueprint, Flask, g

from hub.services.accounts import Principal

bp = Blueprint("web", __name__, template_folder="templates")


def register(app: Flask) -> None:
    """Add the pages to `app` (imported here so the views attach to `bp` first)."""
    from hub.web import catalog  # noqa: F401 - registers its routes on bp
    from hub.web.licenses import permissions

    app.register_blueprint(bp)
    app.jinja_env.globals["permissions"] = permissions


def viewer() -> Principal | None:
    """Who is looking at the page: the signed-in user (read-only), or None.

    Pages read with the user's own visibility; a page never writes with a session's
    authority except through the account views' CSRF-protected forms.
    """
    user = g.get("web_user")
    if user is None:
        return None
    return Principal(user_id=user.id, name=user.name, is_admin=user.is_admin, scopes=("read",))
