"""Prometheus metrics of one service instance, in a registry of its own (not the global one).

Every instrument of prometheus-client is safe to update from many threads; gauges that read
live state (the model queue) are computed when scraped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Web latencies: a cached listing takes milliseconds, a caption on CPU can take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class PrometheusMetrics:
    """The service's instruments; the HTTP app, the service and the model report into them.

    Implements the domain's ``DescribeObserver`` and the HTTP entrypoint's ``HttpMetrics``.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "captioner_http_requests",
            "HTTP requests answered, by method, route (URL rule) and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "captioner_http_request_duration_seconds",
            "Time from request start to response, by method and route (URL rule).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "captioner_http_requests_in_progress",
            "HTTP requests being answered now.",
            registry=self.registry,
        )
        self.captions = Counter(
            "captioner_captions_generated",
            "Images the model described, whichever way in (HTTP, CLI, library).",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "captioner_duplicate_uploads",
            "Uploads answered from storage: the same bytes and prompt were described before.",
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "captioner_model_batch_size",
            "Images described together in one model batch.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "captioner_model_queue_depth",
            "Images waiting for the model.",
            registry=self.registry,
        )
        self.queue_pending = Gauge(
            "captioner_queue_pending",
            "Captions waiting in the catalogue's queue (every replica and worker shares it).",
            registry=self.registry,
        )
        self.queue_oldest_age = Gauge(
            "captioner_queue_oldest_pending_age_seconds",
            "How long the oldest pending caption has waited (0 when none).",
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "captioner_model_load_seconds",
            "How long loading the model took (0 until it has loaded).",
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def request_started(self) -> None:
        self.in_progress.inc()

    def request_finished(self) -> None:
        self.in_progress.dec()

    def caption_generated(self) -> None:
        """DescribeObserver: the model described one image."""
        self.captions.inc()

    def duplicate_upload(self) -> None:
        """DescribeObserver: an upload was answered without running the model."""
        self.duplicates.inc()

    def observe_batch(self, size: int) -> None:
        """BatchingCaptioner's ``on_batch``."""
        self.batch_sizes.observe(size)

    def observe_model_load(self, seconds: float) -> None:
        """TransformersCaptioner's ``on_loaded``."""
        self.model_load_seconds.set(seconds)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Report ``depth()`` as the queue depth whenever metrics are scraped."""
        self.queue_depth.set_function(lambda: float(depth()))

    def watch_caption_queue(self, figures: Callable[[], tuple[float, float]]) -> None:
        """Report ``figures()`` (pending, oldest pending age in s) as the queue gauges when
        scraped; one call serves both gauges of a scrape."""
        lock = threading.Lock()
        cached: list[tuple[float, tuple[float, float]]] = []

        def read(index: int) -> float:
            with lock:
                if not cached or time.monotonic() - cached[0][0] > 1.0:
                    cached[:] = [(time.monotonic(), figures())]
                return cached[0][1][index]

        self.queue_pending.set_function(lambda: read(0))
        self.queue_oldest_age.set_function(lambda: read(1))

    def exposition(self) -> bytes:
        """Everything in the Prometheus text format."""
        return generate_latest(self.registry)
