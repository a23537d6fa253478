"""Error pages in the site's style: how the web surface renders a HubError."""
from __future__ import annotations

import logging

from flask import Response, render_template

from hub.errors import HubError

log = logging.getLogger("hub.web")

#: Headlines a person reads; the error's own title and detail follow them.
HEADLINES = {404: "Page not found", 500: "Something went wrong on the hub"}


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
    return Response(body, status=error.status, mimetype="text/html")
