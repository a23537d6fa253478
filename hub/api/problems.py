"""How /api/v1 renders a HubError: application/problem+json (RFC 9457)."""
from __future__ import annotations

import logging

from flask import g, jsonify

from hub.errors import HubError

log = logging.getLogger("hub.api")


def problem(error: HubError):
    """Render a HubError as application/problem+json, with the headers its status needs."""
    response = jsonify(error.to_problem())
    response.status_code = error.status
    response.mimetype = "application/problem+json"
    response.headers.update(error.headers())
    return response


def caller_safe(error: HubError) -> HubError:
    """The error as this caller may see it: an anonymous caller gets a 503 without its cause.

    A 503's detail names internal hosts, ports, buckets and paths. It is logged with the
    request id; a caller with a token (issued by the operator) still sees it in full.
    """
    if error.status != 503 or g.get("principal") is not None:
        return error
    request_id = g.get("request_id", "-")
    log.warning("%s for request %s: %s", error.code, request_id, error.detail)
    safe = type(error)(f"{error.title}; try again later (the cause is in the server log"
                       f" under request id {request_id}).", status=error.status, **error.extra)
    safe.code, safe.title = error.code, error.title
    return safe
