"""GET /metrics: request counts by route and status, latency, uploads, model batches and queue."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dependency_injector import providers
from flask import Flask
from flask.testing import FlaskClient

from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.model import ImageUpload
from captioner.entrypoints.http import create_app
from captioner.entrypoints.http.metrics import register_metrics
from tests.support.fakes import (
    FakeBatchModel,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)
from tests.support.prometheus import sample
from tests.unit.conftest import FakeWorld


def upload(client: FlaskClient, data: bytes) -> int:
    response = client.post(
        "/upload",
        data={"image": (io.BytesIO(data), "photo.png")},
        content_type="multipart/form-data",
    )
    return response.status_code


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def test_n_uploads_with_k_duplicates_count_n_requests_and_k_duplicates(
    fake_world: FakeWorld,
) -> None:
    images = [fake_image(name) for name in ("cat", "dog", "cat", "owl", "dog", "cat")]

    statuses = [upload(fake_world.client, image) for image in images]
    text = scrape(fake_world.client)

    assert statuses == [200] * 6
    labels = {"method": "POST", "route": "/upload", "status": "200"}
    assert sample(text, "captioner_http_requests_total", **labels) == 6
    assert sample(text, "captioner_duplicate_uploads_total") == 3
    assert sample(text, "captioner_captions_generated_total") == 3


def test_refused_uploads_count_as_requests_but_not_as_captions(fake_world: FakeWorld) -> None:
    upload(fake_world.client, b"<html>not an image</html>")

    text = scrape(fake_world.client)

    labels = {"method": "POST", "route": "/upload", "status": "415"}
    assert sample(text, "captioner_http_requests_total", **labels) == 1
    assert sample(text, "captioner_captions_generated_total") == 0
    assert sample(text, "captioner_duplicate_uploads_total") == 0


def test_requests_are_labelled_by_url_rule_not_by_raw_path(fake_world: FakeWorld) -> None:
    for image_id in (7, 8, 9):
        assert fake_world.client.get(f"/images/{image_id}").status_code == 404
    fake_world.client.get("/no/such/page")

    text = scrape(fake_world.client)

    by_rule = {"method": "GET", "route": "/images/<int:image_id>", "status": "404"}
    assert sample(text, "captioner_http_requests_total", **by_rule) == 3
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert sample(text, "captioner_http_requests_total", **unmatched) == 1
    assert "/images/7" not in text


def test_latency_histogram_observes_every_request(fake_world: FakeWorld) -> None:
    for _ in range(4):
        fake_world.client.get("/healthz")

    text = scrape(fake_world.client)

    labels = {"method": "GET", "route": "/healthz"}
    assert sample(text, "captioner_http_request_duration_seconds_count", **labels) == 4
    assert sample(text, "captioner_http_request_duration_seconds_bucket", le="+Inf", **labels) == 4
    assert sample(text, "captioner_http_request_duration_seconds_sum", **labels) > 0


def test_each_container_has_its_own_registry(fake_world: FakeWorld, tmp_path: Path) -> None:
    other = create_app(_fake_container(tmp_path / "other", FakeBatchModel()))
    upload(fake_world.client, fake_image("cat"))

    mine, theirs = scrape(fake_world.client), scrape(other.test_client())

    assert sample(mine, "captioner_captions_generated_total") == 1
    assert sample(theirs, "captioner_captions_generated_total") == 0


def test_a_caption_made_through_the_library_service_is_counted(tmp_path: Path) -> None:
    container = _fake_container(tmp_path, FakeBatchModel())
    service = container.service()

    try:
        first = service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "cat.png"))
        again = service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "cat.png"))
    finally:
        container.captioner().close()
    text = container.metrics().exposition().decode()

    assert (first.duplicate, again.duplicate) == (False, True)
    assert sample(text, "captioner_captions_generated_total") == 1
    assert sample(text, "captioner_duplicate_uploads_total") == 1
    assert "captioner_http_requests_total{" not in text


class RecordingMetrics:
    """An HttpMetrics that remembers what it was told and shows a fixed page."""

    content_type = "text/plain; charset=utf-8"

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self.started = 0
        self.finished = 0

    def request_started(self) -> None:
        self.started += 1

    def request_finished(self) -> None:
        self.finished += 1

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.append((method, route, status))

    def exposition(self) -> bytes:
        return b"recorded 1\n"


def test_the_http_app_reports_to_any_metrics_backend() -> None:
    app = Flask(__name__)
    app.add_url_rule("/ping/<int:n>", "ping", lambda n: "pong")
    metrics = RecordingMetrics()
    register_metrics(app, metrics)
    client = app.test_client()

    client.get("/ping/3")
    page = client.get("/metrics")

    assert page.get_data() == b"recorded 1\n"
    assert page.content_type == "text/plain; charset=utf-8"
    assert metrics.requests == [("GET", "/ping/<int:n>", 200), ("GET", "/metrics", 200)]
    assert metrics.started == metrics.finished == 2


def test_a_captioner_without_a_queue_reports_an_empty_queue(fake_world: FakeWorld) -> None:
    upload(fake_world.client, fake_image("cat"))

    assert sample(scrape(fake_world.client), "captioner_model_queue_depth") == 0


@dataclass
class BatchingWorld:
    container: Container
    app: Flask
    model: FakeBatchModel


@pytest.fixture
def batching_world(tmp_path: Path) -> Iterator[BatchingWorld]:
    """The real BatchingCaptioner from the container, over a model the test can hold."""
    model = FakeBatchModel()
    container = _fake_container(tmp_path, model)
    yield BatchingWorld(container, create_app(container), model)
    model.release.set()
    container.captioner().close()


def test_batch_sizes_and_queue_depth_come_from_the_batching_captioner(
    batching_world: BatchingWorld,
) -> None:
    world = batching_world
    world.model.hold()
    client = world.app.test_client()
    uploads = [
        threading.Thread(target=upload, args=(world.app.test_client(), fake_image(name)))
        for name in ("a", "b", "c")
    ]
    uploads[0].start()
    assert world.model.started.wait(timeout=10)
    for thread in uploads[1:]:
        thread.start()
    _wait_for(lambda: world.container.captioner().queue_depth == 2)

    while_held = scrape(client)
    world.model.release.set()
    for thread in uploads:
        thread.join(timeout=10)
    after = scrape(client)

    assert sample(while_held, "captioner_model_queue_depth") == 2
    assert sample(after, "captioner_model_queue_depth") == 0
    assert sample(after, "captioner_model_batch_size_count") == len(world.model.batches)
    assert sample(after, "captioner_model_batch_size_sum") == 3
    assert sample(after, "captioner_captions_generated_total") == 3


def test_captions_generated_counts_model_runs_not_answers(
    batching_world: BatchingWorld,
) -> None:
    world = batching_world
    service = world.container.service()
    world.model.hold()
    callers = [
        threading.Thread(
            target=service.describe, args=(ImageUpload(io.BytesIO(fake_image("same")), "a.png"),)
        )
        for _ in range(3)
    ]
    callers[0].start()
    assert world.model.started.wait(timeout=10)
    for caller in callers[1:]:
        caller.start()

    world.model.release.set()
    for caller in callers:
        caller.join(timeout=10)
    text = world.container.metrics().exposition().decode()

    assert world.model.images_described == 1
    assert sample(text, "captioner_captions_generated_total") == 1
    assert sample(text, "captioner_duplicate_uploads_total") == 2


def test_model_load_gauge_shows_the_load_time_the_model_reports(
    batching_world: BatchingWorld,
) -> None:
    client = batching_world.app.test_client()
    before = sample(scrape(client), "captioner_model_load_seconds")

    batching_world.container.metrics().observe_model_load(2.5)

    assert before == 0
    assert sample(scrape(client), "captioner_model_load_seconds") == 2.5


def _fake_container(data_dir: Path, model: FakeBatchModel) -> Container:
    container = build_container(Settings(data_dir=data_dir, max_upload_mb=1, max_wait_ms=1))
    container.model.override(providers.Object(model))
    container.image_decoder.override(providers.Object(FakeImageDecoder()))
    container.image_store.override(providers.Object(InMemoryImageStore()))
    container.repository.override(providers.Object(InMemoryCaptionRepository()))
    return container


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
