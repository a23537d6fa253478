"""The web pages: one blueprint of server-rendered pages over hub.services."""
from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("web", __name__, template_folder="templates")

# Only the hub's own scripts run: no inline script, no other origin.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; object-src 'none';"
                           " base-uri 'self'; frame-ancestors 'none'; form-action 'self'")


def register(app: Flask) -> None:
    """Add the pages to `app`."""
    from hub.web import account, publish  # noqa: F401  (their routes register on bp)

    app.register_blueprint(bp)

    @app.after_request
    def _content_security_policy(response):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response
