"""Error pages in the site's style: how the web surface renders a HubError."""
from __future__ import annotations

import logging

from flask import Response, g, jsonify, render_template

from hub.errors import HubError, caller_safe

log = logging.getLogger("hub.web")

#: Headlines a person reads; the error's own title and detail follow them.
HEADLINES = {404: "Page not found", 500: "Something went wrong on the hub"}


def web_safe(error: HubError) -> HubError:
    """The error as a page may show it: a signed-in user is not the hub's operator, so a
    503's cause (internal hosts, buckets) is shown only to an admin; everyone else reads
    where to find it in the log. Every page that shows a HubError's detail goes through it."""
    user = g.get("web_user")
    return caller_safe(error, trusted=user is not None and bool(user.is_admin),
                       request_id=g.get("request_id", "-"))


def script_problem(error: HubError, **extra) -> Response:
    """problem+json for the pages' scripts (the web surface renders HTML otherwise): the
    error's own body (its code, title and detail as the API gives them), with `extra`."""
    error = web_safe(error)
    response = jsonify({**error.to_problem(), **extra})
    response.status_code = error.status
    response.mimetype = "application/problem+json"
    response.headers.update(_page_headers(error))
    return response


def error_page(error: HubError) -> Response:
    """The HubError as an HTML page with its status; a plain page if the template fails."""
    try:
        body = render_template("error.html", error=error,
                               headline=HEADLINES.get(error.status, error.title))
    except Exception:  # the page must not fail the way the request did (a database down)
        log.exception("the error page could not be rendered")
        from markupsafe import escape

        body = (f"<!doctype html><html lang=en><meta charset=utf-8><title>{error.status}"
                f" {escape(error.title)} · lorastack</title><h1>{escape(error.title)}</h1>"
                f"<p>{escape(error.detail)}</p><p><code>{escape(error.code)}</code></p>")
    response = Response(body, status=error.status, mimetype="text/html")
    response.headers.update(_page_headers(error))
    return response


def _page_headers(error: HubError) -> dict[str, str]:
    # Retry-After (429, 503); not WWW-Authenticate: the pages sign in with a form, not a
    # bearer token.
    return {key: value for key, value in error.headers().items() if key != "WWW-Authenticate"}
