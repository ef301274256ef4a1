"""Concurrent uploads over real HTTP: one model run per image, nothing lost, bounded waits."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from dependency_injector import providers
from PIL import Image

from captioner.adapters.captioners.batching import BatchingCaptioner
from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app
from tests.support.concurrency import all_at_once
from tests.support.data_dir import row_paths, rows, sha256_of, stored_images
from tests.support.fakes import FakeBatchModel
from tests.support.live_server import serving


@dataclass
class Server:
    url: str
    model: FakeBatchModel
    batcher: BatchingCaptioner
    data_dir: Path

    def upload(self, data: bytes, name: str = "photo.png") -> requests.Response:
        return requests.post(f"{self.url}/upload", files={"image": (name, data)}, timeout=60)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start the real app (real decoder, store, database and batcher; a fake model) on a port.

    The settings come from CAPTIONER_* variables, as in production.
    """
    with ExitStack() as stack:

        def start(model: FakeBatchModel, **env: str) -> Server:
            data_dir = tmp_path / "data"
            settings = Settings.load(environ={"CAPTIONER_DATA_DIR": str(data_dir), **env})
            container = build_container(settings)
            container.model.override(providers.Object(model))
            batcher = container.captioner()
            assert isinstance(batcher, BatchingCaptioner)
            # Undone in reverse: stop the server, free the model, stop the batcher.
            stack.callback(container.unwire)
            stack.callback(batcher.close)
            stack.callback(model.release.set)
            url = stack.enter_context(serving(create_app(container)))
            return Server(url, model, batcher, data_dir)

        yield start


def png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (index % 256, index // 256, 77)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_sixteen_concurrent_identical_uploads_run_the_model_once(
    serve: Callable[..., Server],
) -> None:
    server = serve(FakeBatchModel(delay_s=0.5))
    image = png(1)

    responses = all_at_once(16, lambda _: server.upload(image))

    assert [response.status_code for response in responses] == [200] * 16
    bodies = [response.json() for response in responses]
    assert [body["duplicate"] for body in bodies].count(False) == 1
    assert len({body["id"] for body in bodies}) == 1
    assert server.model.images_described == 1
    assert len(rows(server.data_dir)) == 1
    assert stored_images(server.data_dir) == [bodies[0]["path"]]


def test_fifty_concurrent_distinct_uploads_are_all_kept(serve: Callable[..., Server]) -> None:
    server = serve(FakeBatchModel(delay_s=0.02))
    images = [png(index) for index in range(50)]

    responses = all_at_once(50, lambda index: server.upload(images[index], f"{index}.png"))

    assert [response.status_code for response in responses] == [200] * 50
    bodies = [response.json() for response in responses]
    assert not any(body["duplicate"] for body in bodies)
    assert len({body["id"] for body in bodies}) == 50
    assert server.model.images_described == 50
    assert len(rows(server.data_dir)) == 50
    files = stored_images(server.data_dir)
    assert len(files) == 50
    assert set(files) == row_paths(server.data_dir)
    for body, data in zip(bodies, images, strict=True):
        assert sha256_of(server.data_dir / body["path"]) == body["sha256"]
        assert (server.data_dir / body["path"]).read_bytes() == data


def test_a_full_model_queue_answers_503_with_retry_after_and_keeps_the_image_queued(
    serve: Callable[..., Server],
) -> None:
    model = FakeBatchModel()
    server = serve(model, CAPTIONER_MAX_QUEUE="1", CAPTIONER_MAX_BATCH="1")
    model.hold()
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_model: Future[requests.Response] = pool.submit(server.upload, png(1))
        assert model.started.wait(10)
        waiting: Future[requests.Response] = pool.submit(server.upload, png(2))
        wait_for(lambda: server.batcher.queue_depth == 1)
        before = len(stored_images(server.data_dir))

        refused = server.upload(png(3))

        queued = [row for row in rows(server.data_dir) if "pending" in row]
        kept_files = len(stored_images(server.data_dir)) - before
        model.release.set()
        served = [in_model.result(), waiting.result()]

    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert "busy" in refused.json()["error"]
    assert len(queued) == 1  # kept for the retry (or a worker), not lost
    assert kept_files == 1
    assert [response.status_code for response in served] == [200, 200]
    retried = server.upload(png(3))
    assert retried.status_code == 200
    assert retried.json()["id"] == queued[0][0]
    assert retried.json()["status"] == "captioned"
    assert len(rows(server.data_dir)) == 3
    assert len(stored_images(server.data_dir)) == 3


def test_a_caption_slower_than_the_timeout_answers_503_and_keeps_the_image_queued(
    serve: Callable[..., Server],
) -> None:
    model = FakeBatchModel()
    server = serve(model, CAPTIONER_CAPTION_TIMEOUT_S="0.3")
    model.hold()
    image = png(1)
    began = time.monotonic()

    # Three clients, same bytes: one waits on the model, two on it; none waits forever.
    responses = all_at_once(3, lambda _: server.upload(image))

    waited = time.monotonic() - began
    assert [response.status_code for response in responses] == [503] * 3
    assert all(int(response.headers["Retry-After"]) >= 1 for response in responses)
    assert "longer than 0.3 s" in responses[0].json()["error"]
    assert waited < 5
    queued = rows(server.data_dir)
    assert len(queued) == 1  # one pending record for the three, and its file
    assert "pending" in queued[0]
    assert len(stored_images(server.data_dir)) == 1
    assert server.model.images_described == 1

    model.release.set()
    retried = server.upload(image)

    assert retried.status_code == 200
    assert retried.json()["duplicate"] is False
    assert retried.json()["id"] == queued[0][0]
    assert len(rows(server.data_dir)) == 1
