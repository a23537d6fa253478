"""Prometheus metrics: one registry per app (no globals), exposed at /metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Flask, Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest)


@dataclass
class Metrics:
    """The counters the hub keeps."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    uploads: Counter
    upload_bytes: Counter
    downloads: Counter


def install_metrics(app: Flask) -> Metrics:
    """Create the metrics, count every request, and serve them at /metrics."""
    registry = CollectorRegistry()
    metrics = Metrics(
        registry=registry,
        requests=Counter("lorastack_http_requests", "HTTP requests",
                         ["method", "endpoint", "status"], registry=registry),
        latency=Histogram("lorastack_http_request_seconds", "HTTP request latency",
                          ["endpoint"], registry=registry),
        uploads=Counter("lorastack_uploads", "Versions published", registry=registry),
        upload_bytes=Counter("lorastack_upload_bytes", "Bytes published", registry=registry),
        downloads=Counter("lorastack_downloads", "Adapter weight downloads", registry=registry),
    )
    app.extensions["lorastack_metrics"] = metrics

    @app.after_request
    def _count(response):
        # The route's name, not the raw path: a label per adapter would grow without end.
        endpoint = request.endpoint or "unmatched"
        metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        if "started" in g:
            metrics.latency.labels(endpoint).observe(time.perf_counter() - g.started)
        return response

    @app.get("/metrics")
    def _metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return metrics
