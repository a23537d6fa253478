"""How /api/v1 renders a HubError: application/problem+json (RFC 9457)."""
from __future__ import annotations

from flask import g, jsonify

from hub.errors import HubError, caller_safe


def problem(error: HubError):
    """Render a HubError as application/problem+json, with the headers its status needs."""
    response = jsonify(error.to_problem())
    response.status_code = error.status
    response.mimetype = "application/problem+json"
    response.headers.update(error.headers())
    return response


def api_safe(error: HubError) -> HubError:
    """The error as an API or HF caller may see it: a caller with a token (one the operator
    issued) is trusted with a 503's cause, an anonymous one is not."""
    return caller_safe(error, trusted=g.get("principal") is not None,
                       request_id=g.get("request_id", "-"))
