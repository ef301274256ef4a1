"""schemathesis drives the live app from its own /openapi.json: no 5xx, no answer off-schema.

The app is the real container and Flask app with the real Pillow decoder (schemathesis sends
real image files as well as random bytes), a fake captioner that accepts what the decoder
gives it, and in-memory storage; it serves on an ephemeral loopback port for the test only.
The CLI runs all its phases (examples, coverage, fuzzing, stateful) and its default checks
(server errors, status codes, content types, headers and bodies against the schema, valid
input accepted, invalid input refused), with the bounds, seed and per-operation exceptions
of schemathesis.toml beside this file.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers

from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app
from tests.conftest import png_bytes
from tests.fakes import (
    InMemoryCaptionRepository,
    InMemoryImageStore,
    RecordingCaptioner,
)
from tests.integration.live_server import serving

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[str]:
    container = build_container(Settings(data_dir=tmp_path / "data", max_upload_mb=1))
    container.captioner.override(providers.Object(RecordingCaptioner()))
    container.image_store.override(providers.Object(InMemoryImageStore()))
    container.repository.override(providers.Object(InMemoryCaptionRepository()))
    app = create_app(container)
    client = app.test_client()
    # Stored images, so ids 1..3 exist for the reads, the file and the deletes.
    for color in ((200, 0, 0), (0, 200, 0), (0, 0, 200)):
        image = io.BytesIO(png_bytes(color))
        assert client.post("/upload", data={"image": (image, "seed.png")}).status_code == 200
    with serving(app) as url:
        yield url


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(
    live_server: str, tmp_path: Path
) -> None:
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{live_server}/openapi.json",
            "--no-color",
            "--request-timeout",
            "10",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    # The summary is part of the test's output: pytest shows it on failure, -s always.
    print(run.stdout[-6000:], run.stderr[-2000:])
    assert run.returncode == 0, run.stdout[-6000:]
    assert "No issues found" in run.stdout
