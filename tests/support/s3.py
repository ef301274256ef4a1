"""A real S3 endpoint for tests: moto's server on a loopback port, and a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from moto.server import ThreadedMotoServer

from captioner.adapters.storage.s3 import make_s3_client
from tests.support.live_server import free_port

REGION = "us-east-1"


class S3Endpoint:
    """moto's S3 server in a thread; it can be stopped and started again on the same port
    (the objects live in this process, so they outlast a restart, as on a real server)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@dataclass(frozen=True)
class S3Bucket:
    """A new empty bucket on an endpoint, and the store URL that points into it."""

    endpoint: S3Endpoint
    name: str

    @property
    def store_url(self) -> str:
        return f"s3://{self.name}/captioner"

    def object_keys(self) -> list[str]:
        listed = make_s3_client().list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listed.get("Contents", []))


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: S3Endpoint) -> None:
    """Point boto3 at ``endpoint`` the way a user would: the standard AWS variables."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def new_bucket(endpoint: S3Endpoint) -> S3Bucket:
    bucket = S3Bucket(endpoint, f"test-{uuid.uuid4().hex[:16]}")
    make_s3_client().create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    endpoint = S3Endpoint()
    endpoint.start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    use_endpoint(monkeypatch, s3_endpoint)
    return new_bucket(s3_endpoint)
