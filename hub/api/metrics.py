"""Prometheus metrics: one registry per app (no globals), exposed at /metrics.

Requests, uploads and downloads are counted by the process that serves them. Merges are
read from the database at scrape time (MergeCollector): the row is the truth, and the
process being scraped does not see merges end on Celery workers, nor on another gunicorn
worker's inline thread.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from hub.db import Database
from hub.errors import HubError
from hub.models import MERGE_STATUSES, Merge, utcnow
from hub.runtime import EXTENSION_KEY

log = logging.getLogger("hub.metrics")
#: The window of the merge-duration quantiles.
RECENT = timedelta(hours=1)
QUANTILES = (0.5, 0.95)


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
    registry.register(MergeCollector(app.extensions[EXTENSION_KEY].db))
    registry.register(ListingCollector(app.extensions[EXTENSION_KEY]))

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


class ListingCollector(Collector):
    """`lorastack_listing_cache_requests_total{result}`: the catalog listings this process
    served from memory (`hit`) or computed (`miss`), hub.services.listings."""

    def __init__(self, hub) -> None:
        self.hub = hub

    def describe(self):
        return []

    def collect(self):
        listings = self.hub.listings
        family = CounterMetricFamily("lorastack_listing_cache_requests",
                                     "Catalog listings served from memory or computed",
                                     labels=["result"])
        family.add_metric(["hit"], listings.hits)
        family.add_metric(["miss"], listings.misses)
        yield family


class MergeCollector(Collector):
    """Merge gauges read from the database at each scrape.

    - `lorastack_merges{status}`: merges in each status now (one GROUP BY).
    - `lorastack_merge_queue_depth`: merges queued and not yet claimed by a worker.
    - `lorastack_merge_oldest_heartbeat_age_seconds`: how long ago the most silent running
      merge last wrote its heartbeat (0 when none runs); past LORASTACK_STALE_SECONDS the
      sweep hands it out again, so a value that keeps growing means no sweep runs.
    - `lorastack_merge_duration_last_hour_seconds{quantile}` and
      `lorastack_merges_finished_last_hour{status}`: the p50 and p95 of started -> finished
      (the last attempt's) over the merges that succeeded in the last hour, and how many
      ended in each final status then. Cache hits (copies of another merge's result, never run) are left out.
    - `lorastack_metrics_database_up`: 0 when the database did not answer this scrape; the
      merge series are then absent and the rest of /metrics is served as usual.

    Why not a Histogram: a histogram in the web process could only observe the merges this
    process ran, never those Celery workers (or another gunicorn worker) finish, and a
    scrape-time one fed from "rows finished since the last scrape" double-counts with two
    scrapers or two web processes. Quantiles over a recent window, computed from the rows,
    read the same from every process; they are gauges, not something to rate() or sum.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self):
        """Nothing up front: the registry must not run the queries when registering."""
        return []

    def collect(self):
        """One scrape's merge gauges, or only `database_up 0` when the database is away."""
        up = GaugeMetricFamily("lorastack_metrics_database_up",
                               "1 if the database answered this scrape's merge queries")
        try:
            families = self._read()
        except (HubError, SQLAlchemyError) as error:  # serve the rest of /metrics
            log.warning("metrics: merge gauges skipped: %s", getattr(error, "detail", error))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        now = utcnow()
        with self.db.session() as session:
            counts = dict(session.execute(select(Merge.status, func.count())
                                          .group_by(Merge.status)).all())
            oldest = session.scalar(select(func.min(Merge.heartbeat_at))
                                    .where(Merge.status == "running"))
            recent = session.execute(
                select(Merge.status, Merge.started_at, Merge.finished_at)
                .where(Merge.finished_at >= now - RECENT, Merge.attempts > 0)).all()
        by_status = GaugeMetricFamily("lorastack_merges", "Merges in each status",
                                      labels=["status"])
        for status in MERGE_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        depth = GaugeMetricFamily("lorastack_merge_queue_depth",
                                  "Merges queued, not yet claimed by a worker",
                                  value=counts.get("queued", 0))
        age = GaugeMetricFamily(
            "lorastack_merge_oldest_heartbeat_age_seconds",
            "Seconds since the most silent running merge's heartbeat (0: none running)",
            value=max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0)
        return [by_status, depth, age, *self._recent(recent)]

    @staticmethod
    def _recent(rows) -> list[GaugeMetricFamily]:
        """The last hour's quantiles of run time (succeeded merges) and counts by status."""
        window = int(RECENT.total_seconds() // 3600)
        finished = GaugeMetricFamily("lorastack_merges_finished_last_hour",
                                     f"Merges run that ended in the last {window} h",
                                     labels=["status"])
        for status in ("succeeded", "failed", "cancelled"):
            finished.add_metric([status], sum(1 for row in rows if row.status == status))
        durations = sorted((row.finished_at - row.started_at).total_seconds() for row in rows
                           if row.status == "succeeded" and row.started_at is not None)
        quantiles = GaugeMetricFamily(
            "lorastack_merge_duration_last_hour_seconds",
            f"Run time (started to finished) of the merges that succeeded in the last"
            f" {window} h, by quantile; absent when there were none", labels=["quantile"])
        for q in QUANTILES if durations else ():
            quantiles.add_metric([str(q)], _quantile(durations, q))
        return [finished, quantiles]


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted `values`, interpolated (one value: itself)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
