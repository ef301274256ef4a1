"""One structured access-log line per request; with CAPTIONER_LOG_FORMAT=json, one JSON object."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from captioner.config import Settings
from captioner.entrypoints.logs import JsonFormatter, configure_logging
from tests.support.fakes import fake_image
from tests.unit.conftest import FakeWorld

ACCESS_FIELDS = {"method", "path", "status", "duration_ms", "request_id", "sha256", "duplicate"}


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """Starts logging as the server does for log_format=json; then gives what it wrote.

    The set-up runs inside the test (first call), so the handler writes to the test's
    captured stderr; afterwards the JSON handler leaves the root logger again.
    """
    root = logging.getLogger()
    level = root.level
    started = False

    def written() -> str:
        nonlocal started
        if not started:
            started = True
            configure_logging(Settings.from_mapping({"log_format": "json"}).log_format)
            capsys.readouterr()
            return ""
        return capsys.readouterr().err

    yield written
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    root.setLevel(level)


def access_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "captioner.access"]


def upload(world: FakeWorld, data: bytes, **headers: str) -> Any:
    return world.client.post(
        "/upload",
        data={"image": (io.BytesIO(data), "cat.png")},
        content_type="multipart/form-data",
        headers=headers,
    )


def test_json_format_writes_one_object_per_request_with_its_fields(
    fake_world: FakeWorld, json_logs: Callable[[], str]
) -> None:
    json_logs()
    first = upload(fake_world, fake_image("cat"), **{"X-Request-ID": "client-id.1"})
    again = upload(fake_world, fake_image("cat"))
    missing = fake_world.client.get("/images/999")

    lines = access_lines(json_logs())

    assert len(lines) == 3
    assert all(set(line) >= ACCESS_FIELDS for line in lines)
    assert [line["method"] for line in lines] == ["POST", "POST", "GET"]
    assert [line["path"] for line in lines] == ["/upload", "/upload", "/images/999"]
    assert [line["status"] for line in lines] == [200, 200, 404]
    assert [line["duplicate"] for line in lines] == [False, True, None]
    assert lines[0]["sha256"] == first.get_json()["sha256"] == lines[1]["sha256"]
    assert lines[2]["sha256"] is None
    assert lines[0]["request_id"] == "client-id.1"
    assert lines[1]["request_id"] == again.headers["X-Request-ID"]
    assert lines[2]["request_id"] == missing.headers["X-Request-ID"]
    assert all(line["duration_ms"] >= 0 for line in lines)


def test_request_id_is_echoed_or_generated_when_missing_or_unsafe(fake_world: FakeWorld) -> None:
    given = fake_world.client.get("/healthz", headers={"X-Request-ID": "abc-123_x.y"})
    unsafe = fake_world.client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    missing = fake_world.client.get("/healthz")
    another = fake_world.client.get("/healthz")

    assert given.headers["X-Request-ID"] == "abc-123_x.y"
    for response in (unsafe, missing, another):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert missing.headers["X-Request-ID"] != another.headers["X-Request-ID"]


def test_the_request_id_of_an_unexpected_error_is_in_its_body_and_its_log_line(
    fake_world: FakeWorld, json_logs: Callable[[], str]
) -> None:
    json_logs()
    fake_world.captioner.unexpected = RuntimeError("boom")

    response = upload(fake_world, fake_image("cat"), **{"X-Request-ID": "trace-me"})

    lines = access_lines(json_logs())
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error", "request_id": "trace-me"}
    assert [(line["status"], line["request_id"]) for line in lines] == [(500, "trace-me")]
