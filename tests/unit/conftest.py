"""Unit fixtures: the real container and Flask app with every adapter replaced by a fake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dependency_injector import providers
from flask import Flask
from flask.testing import FlaskClient

from captioner.config import Settings
from captioner.container import Container, build_container
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    InMemoryThumbnailStore,
)


@dataclass
class FakeWorld:
    container: Container
    app: Flask
    client: FlaskClient
    captioner: FakeCaptioner
    store: InMemoryImageStore
    repository: InMemoryCaptionRepository
    thumbnails: InMemoryThumbnailStore


def build_fake_world(settings: Settings) -> FakeWorld:
    """The app over fakes, with these settings (the in-memory catalogue keeps the API keys)."""
    from captioner.entrypoints.http import create_app

    container = build_container(settings)
    captioner = FakeCaptioner()
    store = InMemoryImageStore()
    repository = InMemoryCaptionRepository()
    container.captioner.override(providers.Object(captioner))
    container.image_decoder.override(providers.Object(FakeImageDecoder()))
    container.image_store.override(providers.Object(store))
    container.repository.override(providers.Object(repository))
    thumbnails = InMemoryThumbnailStore()
    container.thumbnails.override(providers.Object(thumbnails))
    app = create_app(container)
    app.testing = True
    return FakeWorld(container, app, app.test_client(), captioner, store, repository, thumbnails)


@pytest.fixture
def fake_world(tmp_path: Path) -> Iterator[FakeWorld]:
    world = build_fake_world(Settings(data_dir=tmp_path / "data", max_upload_mb=1))
    yield world
    world.container.unwire()
