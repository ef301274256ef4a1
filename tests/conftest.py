"""Shared fixtures: offline Hugging Face, tiny random-weight models, fakes wired in a container."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The S3 endpoint fixtures (moto's server), for every test that needs a bucket.
pytest_plugins = ["tests.support.s3"]

# No test may reach the network or the user's Hugging Face cache.
_HF_HOME = tempfile.mkdtemp(prefix="captioner-test-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _name in list(os.environ):
    if _name.startswith("CAPTIONER_"):
        del os.environ[_name]


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
def tiny_vit_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.models import build_vit_gpt2

    return build_vit_gpt2(tmp_path_factory.mktemp("models") / "tiny-vit-gpt2")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "data"
    return directory
