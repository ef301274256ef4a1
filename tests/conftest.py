"""Shared fixtures: offline Hugging Face, tiny random-weight models, fakes wired in a container."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer

# The S3 endpoint fixtures (moto's server), for every test that needs a bucket.
pytest_plugins = ["tests.support.s3"]

# No test may reach the network or the user's Hugging Face cache.
_HF_HOME = tempfile.mkdtemp(prefix="captioner-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, True)  # one per run would pile up in /tmp
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _name in list(os.environ):
    if _name.startswith("CAPTIONER_"):
        del os.environ[_name]
# Compiling costs tens of seconds of CPU; only the compile tests ask for it.
os.environ["CAPTIONER_COMPILE"] = "off"


def png_bytes(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)
) -> bytes:
    """A real PNG; different colours give different bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.models import build_blip

    return build_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def slow_compiling_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP whose decoder has 24 layers and writes 40 tokens: its background compile
    (the traced step, checked against the eager one) takes seconds, not a fraction of one,
    so a short script is sure to end while it runs."""
    from tests.support.models import build_blip

    directory = tmp_path_factory.mktemp("models") / "slow-compiling-blip"
    return build_blip(directory, text_layers=24, max_new_tokens=40)


@pytest.fixture(scope="session")
def tiny_vit_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.models import build_vit_gpt2

    return build_vit_gpt2(tmp_path_factory.mktemp("models") / "tiny-vit-gpt2")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    return directory


def _tiny(factory: pytest.TempPathFactory, family: str) -> Path:
    from tests.support import models

    build = getattr(models, f"build_{family}")
    directory: Path = build(factory.mktemp("models") / f"tiny-{family}")
    return directory


@pytest.fixture(scope="session")
def tiny_git_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "git")


@pytest.fixture(scope="session")
def tiny_florence2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "florence2")


@pytest.fixture(scope="session")
def tiny_paligemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "paligemma")


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "idefics3")


@pytest.fixture(scope="session")
def tiny_smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "smolvlm")


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "qwen2_vl")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 server for the whole session; skipped locally when not installed."""
    from tests.support import postgres

    if not postgres.available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(postgres.INSTALL_HINT)
        pytest.skip(postgres.INSTALL_HINT)
    server = postgres.PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
