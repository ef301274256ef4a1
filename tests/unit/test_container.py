"""The container's resources: what the server, the CLI and the library open is closed after."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dependency_injector import providers

from captioner.config import Settings
from captioner.container import build_container, opened
from captioner.domain.errors import CaptionerUnavailable
from captioner.domain.model import ImageUpload
from tests.support.fakes import FakeBatchModel, FakeImageDecoder, fake_image


def test_opened_closes_the_model_worker_and_the_database_on_exit(tmp_path: Path) -> None:
    container = build_container(Settings(data_dir=tmp_path / "data"))
    container.model.override(providers.Object(FakeBatchModel()))
    container.image_decoder.override(providers.Object(FakeImageDecoder()))

    with opened(container):
        service = container.service()
        captioner = container.captioner()
        assert captioner.running
        upload = ImageUpload(io.BytesIO(fake_image("cat")), original_name="cat.png")
        assert service.describe(upload).record.description == "caption of IMG:cat"

    assert not captioner.running
    assert "shut down" in service.readiness().reason
    with pytest.raises(CaptionerUnavailable, match="shutting down"):
        captioner.describe(FakeImageDecoder().decode(io.BytesIO(fake_image("late"))), "")


def test_opened_closes_the_s3_client_of_an_s3_store_on_exit(tmp_path: Path) -> None:
    container = build_container(
        Settings(data_dir=tmp_path / "data", store_url="s3://bucket/prefix")
    )

    with opened(container):
        store = container.image_store()
        assert store.location.bucket == "bucket"
        assert container.s3_client.initialized

    assert not container.s3_client.initialized  # its connection pool was closed
