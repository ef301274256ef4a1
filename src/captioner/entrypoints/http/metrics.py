"""Prometheus metrics of the HTTP app: requests by route and status, latency, uploads; /metrics."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from flask import Blueprint, Flask, Response, g, request

from captioner.adapters.prometheus import PrometheusMetrics
from captioner.entrypoints.http.openapi import Reply, documented

UNMATCHED_ROUTE = "<unmatched>"
# A client may send any token as a method; only these become label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@runtime_checkable
class _Queued(Protocol):
    @property
    def queue_depth(self) -> int: ...


def register_metrics(app: Flask, metrics: PrometheusMetrics, captioner: object) -> None:
    """Count every request of ``app`` into ``metrics`` and serve them at GET /metrics.

    Requests are labelled by URL rule (``/images/<int:image_id>``), never the raw path, so
    the number of series stays bounded whatever clients ask for.
    """
    if isinstance(captioner, _Queued):
        metrics.watch_queue(lambda: captioner.queue_depth)

    @app.before_request
    def start_metrics() -> None:
        g.metrics_started = time.perf_counter()
        metrics.in_progress.inc()

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is None:
            return response
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.observe_request(method, route, response.status_code, time.perf_counter() - started)
        duplicate = g.get("duplicate")
        if duplicate is not None and response.status_code == 200:
            metrics.observe_upload(bool(duplicate))
        return response

    @app.teardown_request
    def end_metrics(_error: BaseException | None) -> None:
        # Teardown runs even when a response handler failed, so the gauge cannot drift up.
        if g.pop("metrics_started", None) is not None:
            metrics.in_progress.dec()

    app.register_blueprint(metrics_blueprint(metrics))


def metrics_blueprint(metrics: PrometheusMetrics) -> Blueprint:
    blueprint = Blueprint("metrics", __name__)

    @blueprint.get("/metrics")
    @documented(
        tags=("operations",),
        replies={
            200: Reply(
                "The Prometheus text exposition format.",
                media={"text/plain": {"schema": {"type": "string"}}},
            )
        },
    )
    def metrics_text() -> Response:
        """Prometheus metrics of this process.

        Requests by route and status, latencies, captions generated, duplicate uploads,
        model batch sizes, model queue depth and model load time.
        """
        return Response(metrics.exposition(), content_type=metrics.content_type)

    return blueprint
