"""Prometheus metrics of the HTTP app: requests by route and status, latency; /metrics.

The app only times and counts requests and serves the exposition text; what the service and
the model do is counted where it happens (wired in the container).
"""

from __future__ import annotations

import time
from typing import Protocol

from flask import Blueprint, Flask, Response, g, request

from captioner.entrypoints.http.openapi.declare import Reply, documented

UNMATCHED_ROUTE = "<unmatched>"
# A client may send any token as a method; only these become label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics(Protocol):
    """What the HTTP app needs from a metrics backend."""

    @property
    def content_type(self) -> str:
        """The media type of ``exposition()``."""
        ...

    def request_started(self) -> None: ...

    def request_finished(self) -> None:
        """Called once per started request, even when answering it failed."""
        ...

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None: ...

    def exposition(self) -> bytes:
        """Every metric, in the format ``content_type`` names."""
        ...


def register_metrics(app: Flask, metrics: HttpMetrics) -> None:
    """Count every request of ``app`` into ``metrics`` and serve them at GET /metrics.

    Requests are labelled by URL rule (``/images/<int:image_id>``), never the raw path, so
    the number of series stays bounded whatever clients ask for.
    """

    @app.before_request
    def start_metrics() -> None:
        g.metrics_started = time.perf_counter()
        metrics.request_started()

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is None:
            return response
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.observe_request(method, route, response.status_code, time.perf_counter() - started)
        return response

    @app.teardown_request
    def end_metrics(_error: BaseException | None) -> None:
        # Teardown runs even when a response handler failed, so the gauge cannot drift up.
        if g.pop("metrics_started", None) is not None:
            metrics.request_finished()

    app.register_blueprint(metrics_blueprint(metrics))


def metrics_blueprint(metrics: HttpMetrics) -> Blueprint:
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
