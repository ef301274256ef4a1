"""schemathesis drives the live app from its own /openapi.json: no 5xx, no answer off-schema.

The app is the real container and Flask app with the real Pillow decoder (schemathesis sends
real image files as well as random bytes), a fake captioner that accepts what the decoder
gives it, and in-memory storage; it serves on an ephemeral loopback port for the test only.
The CLI runs all its phases (examples, coverage, fuzzing, stateful) and its default checks
(server errors, status codes, content types, headers and bodies against the schema, valid
input accepted, invalid input refused, no access without a valid key), with the bounds,
seed and per-operation exceptions of schemathesis.toml beside this file. Keys are required
(auth = on); schemathesis sends an admin key, and checks that requests without it, or with
a made-up one, are refused.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dependency_injector import providers

from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.access import Scope
from captioner.entrypoints.http import create_app
from tests.conftest import png_bytes
from tests.support.fakes import (
    InMemoryCaptionRepository,
    InMemoryImageStore,
    RecordingCaptioner,
)
from tests.support.live_server import serving

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_key: str


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    container = build_container(
        # Wrong keys are what the auth checks send on purpose: no 429 in their way.
        Settings(data_dir=tmp_path / "data", max_upload_mb=1, auth="on", auth_failure_rate="")
    )
    container.captioner.override(providers.Object(RecordingCaptioner()))
    container.image_store.override(providers.Object(InMemoryImageStore()))
    container.repository.override(providers.Object(InMemoryCaptionRepository()))
    admin_key = container.access().create_key(Scope.ADMIN, "schemathesis").secret
    app = create_app(container)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin_key}"}
    # Stored images, so ids 1..3 exist for the reads, the file and the deletes.
    for color in ((200, 0, 0), (0, 200, 0), (0, 0, 200)):
        image = io.BytesIO(png_bytes(color))
        stored = client.post("/upload", data={"image": (image, "seed.png")}, headers=headers)
        assert stored.status_code == 200
    with serving(app) as url:
        yield LiveServer(url, admin_key)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(
    live_server: LiveServer, tmp_path: Path
) -> None:
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{live_server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {live_server.admin_key}",
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
