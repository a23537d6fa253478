"""The Flask application factory and the objects it wires together."""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from hub.config import Settings
from hub.db import Database
from hub.storage import BlobStore, open_store

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class Hub:
    """What a request handler needs: settings, the database and the blob store."""

    settings: Settings
    db: Database
    store: BlobStore


def current_hub() -> Hub:
    """The Hub of the running app."""
    return current_app.extensions["lorastack"]


def build_app(settings: Settings | None = None) -> Flask:
    """Create the app: settings from the environment unless given; nothing global."""
    from hub.api import api_v1, register_error_handlers
    from hub.api.metrics import install_metrics
    from hub.api.uploads import HubRequest

    settings = settings or Settings.from_env()
    app = Flask("hub")
    app.request_class = HubRequest
    app.config.update(
        SECRET_KEY=settings.resolved_secret_key(),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    hub = Hub(settings=settings, db=Database(settings.database_url),
              store=open_store(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url))
    app.extensions["lorastack"] = hub
    (settings.data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    app.register_blueprint(api_v1)
    register_error_handlers(app)
    install_metrics(app)

    @app.before_request
    def _start_timer() -> None:
        # A caller's id is kept (it ties our log line to theirs) if it is short and plain.
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        g.started = time.perf_counter()  # for the latency histogram (hub.api.metrics)

    @app.after_request
    def _echo_request_id(response):
        # gunicorn's access log prints it: one line per request with its id.
        response.headers["X-Request-ID"] = g.get("request_id", "-")
        return response

    return app
