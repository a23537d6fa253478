"""The Flask application factory: settings, the Hub, the surfaces and their error pages."""
from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Callable

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from hub.bodies import UPLOAD_ENDPOINTS
from hub.config import Settings
from hub.errors import (FileTooLarge, HubError, InternalError, InvalidRequest, MethodNotAllowed,
                        NotFound)
from hub.resources import STATIC_DIR
from hub.runtime import EXTENSION_KEY, open_hub

log = logging.getLogger("hub.app")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self';"
                           " img-src 'self' data:; object-src 'none'; base-uri 'self';"
                           " form-action 'self'; frame-ancestors 'none'")

#: How one surface renders a HubError: (path prefix, renderer); the longest prefix wins.
Renderer = Callable[[HubError], Response]


def build_app(settings: Settings | None = None) -> Flask:
    """Create the app: settings from the environment unless given; nothing global."""
    from hub.api import api_v1
    from hub.limits import install_limits
    from hub.api.problems import problem
    from hub.api.metrics import install_metrics
    from hub.api.uploads import HubRequest
    from hub.hf import register as register_hf
    from hub.jobs import open_queue
    from hub.web import register as register_web

    settings = settings or Settings.from_env()
    app = Flask("hub", static_folder=str(STATIC_DIR), static_url_path="/static")
    app.request_class = HubRequest
    app.config.update(
        SECRET_KEY=settings.resolved_secret_key(),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    hub = open_hub(settings)
    app.extensions[EXTENSION_KEY] = hub
    (settings.data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    hub.queue = open_queue(hub)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # The last N proxies' X-Forwarded-For / -Proto are believed: remote_addr becomes
        # the caller's address for the rate limits, and url_for the scheme it used.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies,
                                x_proto=settings.trusted_proxies)
    app.register_blueprint(api_v1)
    register_hf(app)
    register_web(app)
    _register_error_handlers(app, [("/api/", problem)])
    install_metrics(app)

    @app.before_request
    def _refuse_nul() -> None:
        # No name, label, path or id holds a NUL, and PostgreSQL cannot even compare one.
        if "\x00" in request.path:
            raise NotFound("No such resource (the path holds a NUL character).")

    @app.before_request
    def _limit_body() -> None:
        # werkzeug refuses a larger Content-Length before reading, and stops a chunked
        # body at the limit: a JSON body never costs more than this much memory.
        if request.endpoint not in UPLOAD_ENDPOINTS:
            request.max_content_length = settings.max_json_bytes

    @app.before_request
    def _start_timer() -> None:
        # A caller's id is kept (it ties our log line to theirs) if it is short and plain.
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        g.started = time.perf_counter()  # for the latency histogram (hub.api.metrics)

    # After the hooks above: a refused request still has its id, timer and body limit.
    install_limits(app, settings)

    @app.after_request
    def _echo_request_id(response):
        # gunicorn's access log prints it: one line per request with its id.
        response.headers["X-Request-ID"] = g.get("request_id", "-")
        # A browser must take the declared type: an uploaded file is never run as HTML.
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.mimetype == "text/html":
            # Pages run only the hub's own scripts and styles: markup that slipped into a
            # page (a model card) could not load or run anything.
            response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "same-origin"
        return response

    return app


def _register_error_handlers(app: Flask, renderers: list[tuple[str, Renderer]]) -> None:
    """Every failure becomes a HubError, rendered by the surface whose path it reached."""
    from hub.api.problems import api_safe, problem
    from hub.api.uploads import MalformedForm
    from hub.web.errors import error_page, web_safe

    def render(error: HubError) -> Response:
        path = request.path
        matches = [(prefix, fn) for prefix, fn in renderers if path.startswith(prefix)]
        if matches:
            return max(matches, key=lambda match: len(match[0]))[1](error)
        if request.blueprint == "web":
            return error_page(error)
        best = request.accept_mimetypes.best_match(["application/json", "text/html"])
        return error_page(error) if best == "text/html" else problem(error)

    @app.errorhandler(HubError)
    def _hub_error(error: HubError):
        return render(web_safe(error) if request.blueprint == "web" else api_safe(error))

    @app.errorhandler(MalformedForm)
    def _malformed_form(error: MalformedForm):
        # Wherever a form is read (the CSRF check reads every page's): the sender's mistake.
        return render(InvalidRequest(f"The body is not valid multipart/form-data: {error};"
                                     " send the fields as multipart parts."))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error):
        limit = request.max_content_length
        if request.endpoint not in UPLOAD_ENDPOINTS:
            return render(InvalidRequest(
                f"The body is larger than this hub accepts here ({limit} bytes;"
                " LORASTACK_MAX_JSON_BYTES): send a small JSON object.", status=413))
        length = request.content_length
        if limit is None or (length is not None and length <= limit):
            # Not the upload: werkzeug's MAX_FORM_MEMORY_SIZE / MAX_FORM_PARTS tripped.
            return render(InvalidRequest(
                f"A form field is larger than {app.config.get('MAX_FORM_MEMORY_SIZE')} bytes,"
                " or the form has too many parts; 'metadata' must be a small JSON object.",
                status=413))
        return render(FileTooLarge(f"The upload is larger than this hub accepts ({limit} bytes;"
                                   " LORASTACK_MAX_UPLOAD_BYTES)."))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if error.code == 404:
            if not request.path.startswith("/api/"):
                return render(NotFound("No such page: check the address, or search the"
                                       " catalog."))
            return render(NotFound("No such endpoint; see the API at /api/v1 "
                                   "(its description: /api/v1/openapi.json)."))
        if error.code == 405:
            wrapped: HubError = MethodNotAllowed(error.description or error.name)
        else:
            wrapped = InvalidRequest(error.description or error.name, status=error.code)
            wrapped.title = error.name
        response = render(wrapped)
        for key, value in error.get_headers():
            if key.lower() != "content-type":  # Allow (405), Content-Range (416)
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        return render(InternalError("An internal error occurred; it has been logged."))
