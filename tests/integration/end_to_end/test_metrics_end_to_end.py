"""/metrics with the real container and a tiny real model: load time and batches are reported."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app
from tests.conftest import png_bytes
from tests.support.prometheus import sample

pytestmark = pytest.mark.slow


def test_model_load_time_and_batches_reach_the_metrics(tiny_blip_dir: Path, data_dir: Path) -> None:
    container = build_container(
        Settings(model=str(tiny_blip_dir), data_dir=data_dir, max_new_tokens=4)
    )
    app = create_app(container)
    assert container.service().wait_until_ready(timeout=120).ready
    client = app.test_client()

    statuses = [
        client.post("/upload", data={"image": (io.BytesIO(image), "photo.png")}).status_code
        for image in (png_bytes((200, 0, 0)), png_bytes((0, 0, 200)), png_bytes((200, 0, 0)))
    ]
    text = client.get("/metrics").get_data(as_text=True)
    container.captioner().close()

    assert statuses == [200, 200, 200]

    assert sample(text, "captioner_model_load_seconds") > 0
    assert sample(text, "captioner_model_batch_size_sum") == 2
    assert sample(text, "captioner_captions_generated_total") == 2
    assert sample(text, "captioner_duplicate_uploads_total") == 1
    assert sample(text, "captioner_model_queue_depth") == 0
