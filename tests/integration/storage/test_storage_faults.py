"""Full, read-only and unreachable storage answer 507 / 503 with a reason, never a 500."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError
from dependency_injector import providers
from flask.testing import FlaskClient

from captioner.adapters.imaging.thumbnails import render_thumbnail
from captioner.adapters.storage.disk import FilesystemImageStore
from captioner.adapters.storage.disk_thumbnails import DiskThumbnailStore
from captioner.adapters.storage.s3 import BucketLocation, s3_fault
from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.errors import StorageFull, StorageUnavailable
from captioner.domain.model import ImageDigest
from captioner.entrypoints.http import create_app
from tests.conftest import png_bytes
from tests.support.captioners import SizeCaptioner
from tests.support.data_dir import rows
from tests.support.disks import FaultyDisk, faulty_disk


def local_app(data_dir: Path, disk: FaultyDisk | None, min_free_mb: float = 0.0) -> Container:
    container = build_container(Settings(data_dir=data_dir, min_free_mb=min_free_mb))
    container.captioner.override(providers.Object(SizeCaptioner()))
    if disk is not None:
        container.image_store.override(
            providers.Object(FilesystemImageStore(data_dir, min_free_mb, write=disk.write))
        )
        container.thumbnails.override(
            providers.Object(DiskThumbnailStore(data_dir, render_thumbnail, write=disk.write))
        )
    return container


@pytest.fixture
def uploads_disk(data_dir: Path) -> Iterator[FaultyDisk]:
    with faulty_disk(data_dir / "uploads") as disk:
        yield disk


def client_of(container: Container) -> FlaskClient:
    app = create_app(container)
    app.testing = True
    return app.test_client()


def post(client: FlaskClient, data: bytes) -> tuple[int, dict[str, object], dict[str, str]]:
    response = client.post(
        "/upload", data={"image": (io.BytesIO(data), "a.png")}, content_type="multipart/form-data"
    )
    body = response.get_json()
    assert isinstance(body, dict)
    return response.status_code, body, dict(response.headers)


def test_a_full_disk_answers_507_and_readyz_says_so(
    data_dir: Path, uploads_disk: FaultyDisk
) -> None:
    container = local_app(data_dir, uploads_disk)
    client = client_of(container)
    stored = post(client, png_bytes((1, 1, 1)))
    uploads_disk.fill()

    status, body, _ = post(client, png_bytes((2, 2, 2), size=(300, 300)))
    ready = client.get("/readyz")

    assert status == 507
    assert "Storage is full" in str(body["error"])
    assert "Free disk space" in str(body["error"])
    assert ready.status_code == 503
    assert "full" in ready.get_json()["reason"]
    # Nothing half-written: no row, and no temp file beside the stored image.
    assert len(rows(data_dir)) == 1
    assert list((data_dir / "uploads").rglob(".incoming-*")) == []
    image_id = stored[1]["id"]
    assert client.get("/images").get_json()[0]["id"] == image_id
    assert client.get(f"/images/{image_id}/file").status_code == 200
    container.repository().close()


def test_a_read_only_disk_answers_503_and_keeps_serving_what_it_has(
    data_dir: Path, uploads_disk: FaultyDisk
) -> None:
    container = local_app(data_dir, uploads_disk)
    client = client_of(container)
    stored = post(client, png_bytes((3, 3, 3)))[1]
    uploads_disk.make_read_only()

    status, body, headers = post(client, png_bytes((4, 4, 4)))
    ready = client.get("/readyz")

    assert status == 503
    assert "read-only" in str(body["error"])
    assert int(headers["Retry-After"]) > 0
    assert ready.status_code == 503
    assert "read-only" in ready.get_json()["reason"]
    assert len(rows(data_dir)) == 1
    assert client.get(f"/images/{stored['id']}/file").data == png_bytes((3, 3, 3))
    assert client.get("/images").status_code == 200
    container.repository().close()


def test_a_thumbnail_is_served_even_when_it_cannot_be_kept(data_dir: Path) -> None:
    with faulty_disk(data_dir / "thumbnails") as disk:
        container = local_app(data_dir, disk)
        client = client_of(container)
        image_id = post(client, png_bytes((5, 5, 5), size=(900, 600)))[1]["id"]
        disk.make_read_only()

        response = client.get(f"/images/{image_id}/thumbnail")

        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/webp"
        assert list((data_dir / "thumbnails").rglob("*.webp")) == []
        container.repository().close()


def test_less_free_space_than_min_free_mb_refuses_uploads_and_readiness(data_dir: Path) -> None:
    container = local_app(data_dir, None, min_free_mb=1e12)
    client = client_of(container)

    status, body, _ = post(client, png_bytes((6, 6, 6)))
    ready = client.get("/readyz")

    assert status == 507
    assert "min_free_mb" in str(body["error"])
    assert ready.status_code == 503
    assert "min_free_mb" in ready.get_json()["reason"]
    assert rows(data_dir) == []
    container.repository().close()


def test_a_delete_on_a_read_only_disk_forgets_the_record_and_leaves_the_file_to_check(
    data_dir: Path, uploads_disk: FaultyDisk
) -> None:
    container = local_app(data_dir, uploads_disk)
    client = client_of(container)
    image_id = post(client, png_bytes((7, 7, 7)))[1]["id"]
    uploads_disk.make_read_only()

    deleted = client.delete(f"/images/{image_id}")

    assert deleted.status_code == 200
    assert client.get(f"/images/{image_id}").status_code == 404
    container.repository().close()


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("QuotaExceeded", 403, StorageFull),
        ("XMinioAdminBucketQuotaExceeded", 400, StorageFull),
        ("XMinioStorageFull", 507, StorageFull),
        ("SlowDown", 503, StorageUnavailable),
        ("InternalError", 500, StorageUnavailable),
        ("AccessDenied", 403, StorageUnavailable),
        ("NoSuchBucket", 404, StorageUnavailable),
    ],
)
def test_s3_refusals_become_storage_faults(code: str, status: int, kind: type) -> None:
    error = ClientError(
        {
            "Error": {"Code": code, "Message": "no"},
            "ResponseMetadata": {
                "HTTPStatusCode": status,
                "HTTPHeaders": {},
                "HostId": "",
                "RequestId": "",
                "RetryAttempts": 0,
            },
        },
        "PutObject",
    )

    fault = s3_fault(error, "store the image", BucketLocation.parse("s3://bucket/prefix"))

    assert isinstance(fault, kind)
    assert code in str(fault)


@pytest.mark.parametrize(
    ("code", "status", "permanent"),
    [
        ("NoSuchBucket", 404, True),
        ("AccessDenied", 403, True),
        ("403", 403, True),  # a refused HEAD has no body to name the code
        ("InvalidAccessKeyId", 403, True),
        ("SignatureDoesNotMatch", 403, True),
        ("SlowDown", 503, False),
        ("InternalError", 500, False),
    ],
)
def test_refusals_no_retry_cures_are_permanent_and_name_bucket_and_endpoint(
    code: str, status: int, permanent: bool
) -> None:
    error = ClientError(
        {
            "Error": {"Code": code, "Message": "no"},
            "ResponseMetadata": {
                "HTTPStatusCode": status,
                "HTTPHeaders": {},
                "HostId": "",
                "RequestId": "",
                "RetryAttempts": 0,
            },
        },
        "PutObject",
    )

    fault = s3_fault(
        error, "store the image", BucketLocation.parse("s3://photos/p"), "http://s3.local:9000"
    )

    assert isinstance(fault, StorageUnavailable)
    assert (fault.retry_after_s is None) is permanent
    if permanent:
        assert "'photos'" in str(fault)
        assert "http://s3.local:9000" in str(fault)


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ],
)
def test_an_unreachable_endpoint_is_unavailable_not_an_error(error: Exception) -> None:
    assert isinstance(error, EndpointConnectionError | ConnectTimeoutError)
    fault = s3_fault(error, "store the image", BucketLocation.parse("s3://bucket"))

    assert isinstance(fault, StorageUnavailable)
    assert fault.retry_after_s is not None
    assert fault.retry_after_s > 0


def test_a_missing_key_is_no_storage_fault() -> None:
    error = ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")

    assert s3_fault(error, "read", BucketLocation.parse("s3://bucket/p")) is None


def test_a_disk_store_translates_an_injected_enospc(tmp_path: Path) -> None:
    disk = FaultyDisk(tmp_path / "uploads", size_kb=0)  # never mounted: faults are injected
    store = FilesystemImageStore(tmp_path, min_free_mb=0, write=disk.write)
    disk.fill()

    with pytest.raises(StorageFull):
        store.save(ImageDigest.of_bytes(b"x"), io.BytesIO(b"x"), "png")
    assert not store.readiness().ready


def test_a_big_upload_spooled_onto_a_full_data_dir_answers_507(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with faulty_disk(data_dir, size_kb=2048) as disk:
        # The spool is werkzeug's own temp file: only a real full disk can fail it.
        assert disk.mounted, "this test mounts a tmpfs: run it as root (as CI does)"
        container = local_app(data_dir, None)
        client = client_of(container)
        assert client.get("/images").status_code == 200  # database made while there is room
        disk.fill()

        status, body, _ = post(client, png_bytes(size=(1200, 1200)) + bytes(1024 * 1024))

        assert status == 507
        assert "could not be received" in str(body["error"])
        assert rows(data_dir) == []
        assert client.get("/images").status_code == 200
        container.repository().close()


def test_a_database_on_a_full_disk_answers_507(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with faulty_disk(data_dir, size_kb=4096) as disk:
        # SQLite writes its own files: only a real full disk can fail them.
        assert disk.mounted, "this test mounts a tmpfs: run it as root (as CI does)"
        container = local_app(data_dir, None)
        # Image files on another disk, which has room: only the database's disk is full.
        container.image_store.override(
            providers.Object(FilesystemImageStore(tmp_path / "images", min_free_mb=0))
        )
        client = client_of(container)
        first = post(client, png_bytes((1, 2, 3)))[1]
        disk.fill()

        status, body, _ = post(client, png_bytes((3, 2, 1), size=(20, 20)))

        assert status == 507, body
        assert "database" in str(body["error"])
        assert "Storage is full" in str(body["error"])
        assert client.get(f"/images/{first['id']}").status_code == 200
        assert [image["id"] for image in client.get("/images").get_json()] == [first["id"]]
        container.repository().close()
