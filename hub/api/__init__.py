"""The /api/v1 blueprint and the one problem+json error renderer."""
from __future__ import annotations

import logging

from flask import Blueprint, Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from hub.errors import FileTooLarge, HubError, InvalidRequest, NotFound

log = logging.getLogger("hub.api")

api_v1 = Blueprint("api_v1", __name__, url_prefix="/api/v1")


def problem(error: HubError):
    """Render a HubError as application/problem+json."""
    response = jsonify(error.to_problem())
    response.status_code = error.status
    response.mimetype = "application/problem+json"
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="lorastack"'
    return response


def register_error_handlers(app: Flask) -> None:
    """Every error leaves as problem+json: ours, werkzeug's, and unexpected ones."""

    @app.errorhandler(HubError)
    def _hub_error(error: HubError):
        return problem(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        length = request.content_length
        if limit is None or (length is not None and length <= limit):
            # Not the upload: werkzeug's MAX_FORM_MEMORY_SIZE / MAX_FORM_PARTS tripped.
            return problem(InvalidRequest(
                f"A form field is larger than {app.config.get('MAX_FORM_MEMORY_SIZE')} bytes,"
                " or the form has too many parts; 'metadata' must be a small JSON object.",
                status=413))
        return problem(FileTooLarge(f"The upload is larger than this hub accepts ({limit} bytes;"
                                    " LORASTACK_MAX_UPLOAD_BYTES)."))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if error.code == 404:
            return problem(NotFound("No such endpoint; see the API at /api/v1."))
        wrapped = InvalidRequest(error.description or error.name, status=error.code,
                                 code="method_not_allowed" if error.code == 405 else
                                 "invalid_request")
        wrapped.title = error.name
        response = problem(wrapped)
        for key, value in error.get_headers():
            if key.lower() != "content-type":  # Allow (405), Content-Range (416)
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        failure = HubError("An internal error occurred; it has been logged.", code="internal",
                           status=500)
        failure.title = "Internal server error"
        return problem(failure)


from hub.api import adapters, service  # noqa: E402,F401  (routes register on api_v1)
