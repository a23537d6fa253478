"""How /api/v1 renders a HubError: application/problem+json (RFC 9457)."""
from __future__ import annotations

from flask import jsonify

from hub.errors import HubError


def problem(error: HubError):
    """Render a HubError as application/problem+json, with the headers its status needs."""
    response = jsonify(error.to_problem())
    response.status_code = error.status
    response.mimetype = "application/problem+json"
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="lorastack"'
    retry_after = error.extra.get("retry_after")
    if error.status in (429, 503) and retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after))
    return response
