"""The service on an S3 bucket (moto server), over HTTP and the CLI: no image in the data dir."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dependency_injector import providers
from flask.testing import FlaskClient
from PIL import Image

from captioner.adapters.storage.s3 import S3ImageStore, make_s3_client
from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.downloads import content_disposition
from captioner.domain.errors import StorageUnavailable
from captioner.domain.model import ImageDigest
from captioner.entrypoints.cli import main
from captioner.entrypoints.http import create_app
from tests.conftest import png_bytes
from tests.support.captioners import SizeCaptioner
from tests.support.data_dir import stored_images
from tests.support.s3 import S3Bucket, S3Endpoint, new_bucket, use_endpoint

TIMEOUT_S = 1.0


def s3_container(data_dir: Path, store_url: str) -> Container:
    container = build_container(
        Settings(data_dir=data_dir, store_url=store_url, store_timeout_s=TIMEOUT_S)
    )
    container.captioner.override(providers.Object(SizeCaptioner()))
    return container


@pytest.fixture
def client(data_dir: Path, s3_bucket: S3Bucket) -> Iterator[FlaskClient]:
    container = s3_container(data_dir, s3_bucket.store_url)
    app = create_app(container)
    app.testing = True
    yield app.test_client()
    container.repository().close()


def upload(client: FlaskClient, data: bytes, name: str = "photo.png") -> dict[str, object]:
    response = client.post(
        "/upload", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def key_of(bucket: S3Bucket, sha256: str, suffix: str) -> str:
    return f"captioner/{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"


def test_uploads_land_in_the_bucket_and_nothing_in_the_data_dir(
    client: FlaskClient, s3_bucket: S3Bucket, data_dir: Path
) -> None:
    data = png_bytes(size=(640, 480))

    first = upload(client, data)
    again = upload(client, data, "same-bytes-other-name.png")

    sha = ImageDigest.of_bytes(data).hex
    assert first["description"] == "an image of 640x480"
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert again["id"] == first["id"]
    assert s3_bucket.object_keys() == [key_of(s3_bucket, sha, ".png")]
    assert stored_images(data_dir) == []


def test_the_file_streams_from_the_bucket_with_length_type_and_validator(
    client: FlaskClient,
) -> None:
    data = png_bytes((1, 2, 3), size=(300, 200))
    image_id = upload(client, data)["id"]

    response = client.get(f"/images/{image_id}/file")
    etag = response.headers["ETag"]
    cached = client.get(f"/images/{image_id}/file", headers={"If-None-Match": etag})
    part = client.get(f"/images/{image_id}/file", headers={"Range": "bytes=1-3"})

    assert response.status_code == 200
    assert response.data == data
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Length"] == str(len(data))
    assert etag == f'"{ImageDigest.of_bytes(data).hex}"'
    assert cached.status_code == 304
    assert (part.status_code, part.data) == (206, data[1:4])


def test_thumbnails_are_kept_beside_the_image_in_the_bucket(
    client: FlaskClient, s3_bucket: S3Bucket, data_dir: Path
) -> None:
    data = png_bytes((9, 9, 9), size=(1000, 500))
    image_id = upload(client, data)["id"]

    first = client.get(f"/images/{image_id}/thumbnail")
    second = client.get(f"/images/{image_id}/thumbnail")

    sha = ImageDigest.of_bytes(data).hex
    assert first.status_code == second.status_code == 200
    assert first.headers["Content-Type"] == "image/webp"
    assert first.data == second.data
    assert second.headers["Content-Length"] == str(len(second.data))
    assert key_of(s3_bucket, sha, ".thumbnail.webp") in s3_bucket.object_keys()
    assert stored_images(data_dir) == []


def test_delete_removes_the_image_with_every_caption_and_its_objects(
    client: FlaskClient, s3_bucket: S3Bucket
) -> None:
    data = png_bytes((4, 5, 6))
    plain = upload(client, data)["id"]
    client.get(f"/images/{plain}/thumbnail")
    prompted = client.post(
        "/upload",
        data={"image": (io.BytesIO(data), "a.png"), "prompt": "what colour?"},
        content_type="multipart/form-data",
    ).get_json()["id"]

    assert client.delete(f"/images/{plain}").status_code == 200
    assert s3_bucket.object_keys() == []  # the file and thumbnail, with both captions
    assert client.get(f"/images/{prompted}").status_code == 404
    assert client.delete(f"/images/{prompted}").status_code == 404


def test_check_repairs_a_bucket_orphans_after_their_grace(
    client: FlaskClient,
    s3_bucket: S3Bucket,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kept = upload(client, png_bytes((7, 7, 7)))
    lost = upload(client, png_bytes((8, 8, 8)))
    orphan = png_bytes((9, 9, 9))
    orphan_sha = ImageDigest.of_bytes(orphan).hex
    s3 = make_s3_client()
    s3.put_object(Bucket=s3_bucket.name, Key=key_of(s3_bucket, orphan_sha, ".png"), Body=orphan)
    s3.delete_object(Bucket=s3_bucket.name, Key=key_of(s3_bucket, str(lost["sha256"]), ".png"))
    monkeypatch.setenv("CAPTIONER_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CAPTIONER_STORE_URL", s3_bucket.store_url)

    young = main(["check"])  # the orphan is seconds old: maybe an upload in flight
    young_report = capsys.readouterr().out
    repaired = main(["check", "--repair", "--orphan-grace", "0"])
    repaired_report = capsys.readouterr().out
    clean = main(["check"])

    assert young == 1
    assert "missing_file" in young_report
    assert "orphan_file" not in young_report
    assert repaired == 0
    assert "orphan_file" in repaired_report
    assert f"record {lost['id']}" in repaired_report
    assert clean == 0
    assert s3_bucket.object_keys() == [key_of(s3_bucket, str(kept["sha256"]), ".png")]
    assert client.get(f"/images/{lost['id']}").status_code == 404
    assert stored_images(data_dir) == []


def test_a_bucket_is_listed_page_by_page(s3_bucket: S3Bucket) -> None:
    s3 = make_s3_client()
    shas = [ImageDigest.of_bytes(str(index).encode()).hex for index in range(5)]
    for sha in shas:
        s3.put_object(Bucket=s3_bucket.name, Key=key_of(s3_bucket, sha, ".png"), Body=b"x")
        s3.put_object(
            Bucket=s3_bucket.name, Key=key_of(s3_bucket, sha, ".thumbnail.webp"), Body=b"t"
        )
    store = S3ImageStore(make_s3_client(), s3_bucket.store_url, list_page_size=2)

    listed = list(store.paths())

    assert sorted(listed) == sorted(f"uploads/{sha[:2]}/{sha[2:4]}/{sha}.png" for sha in shas)


def test_a_stopped_endpoint_answers_503_fast_and_service_resumes_by_itself(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = S3Endpoint()
    endpoint.start()
    try:
        use_endpoint(monkeypatch, endpoint)
        bucket = new_bucket(endpoint)
        container = s3_container(data_dir, bucket.store_url)
        app = create_app(container)
        app.testing = True
        client = app.test_client()
        stored = upload(client, png_bytes((1, 1, 1)))
        assert client.get("/readyz").status_code == 200

        endpoint.stop()
        started = time.monotonic()
        refused = client.post(
            "/upload",
            data={"image": (io.BytesIO(png_bytes((2, 2, 2))), "new.png")},
            content_type="multipart/form-data",
        )
        took_s = time.monotonic() - started
        listing = client.get("/images")
        ready = client.get("/readyz")
        record = client.get(f"/images/{stored['id']}")
        file = client.get(f"/images/{stored['id']}/file")

        assert refused.status_code == 503
        assert "object storage" in refused.get_json()["error"]
        assert int(refused.headers["Retry-After"]) > 0
        assert took_s < 4 * TIMEOUT_S
        assert listing.status_code == 200
        assert [image["id"] for image in listing.get_json()] == [stored["id"]]
        assert record.status_code == 200
        assert ready.status_code == 503
        assert "object storage" in ready.get_json()["reason"]
        assert file.status_code == 503
        assert client.get("/images").get_json()[0]["id"] == stored["id"]

        endpoint.start()
        assert client.get("/readyz").status_code == 200
        again = upload(client, png_bytes((2, 2, 2)))
        assert again["duplicate"] is False
        assert client.get(f"/images/{stored['id']}/file").status_code == 200
        assert stored_images(data_dir) == []
        container.repository().close()
    finally:
        endpoint.stop()


def test_files_can_be_redirected_to_presigned_bucket_urls(
    data_dir: Path, s3_bucket: S3Bucket
) -> None:
    container = build_container(
        Settings(data_dir=data_dir, store_url=s3_bucket.store_url, store_redirect_s=60)
    )
    container.captioner.override(providers.Object(SizeCaptioner()))
    app = create_app(container)
    app.testing = True
    client = app.test_client()
    data = png_bytes((3, 1, 4))
    image_id = upload(client, data, name="Été à Zürich.png")["id"]

    moved = client.get(f"/images/{image_id}/file")
    fetched = requests.get(moved.headers["Location"], timeout=10)

    assert moved.status_code == 302
    assert moved.headers["Location"].startswith(s3_bucket.endpoint.url)
    assert "X-Amz-Expires=60" in moved.headers["Location"]
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["Content-Type"] == "image/png"
    # Named as the service itself names it: the original name, not the digest.
    assert fetched.headers["Content-Disposition"] == content_disposition("Été à Zürich.png")
    # The link expires: no shared cache may keep serving the bytes after that.
    assert fetched.headers["Cache-Control"].startswith("private")
    assert client.get("/images/999/file").status_code == 404
    container.repository().close()


def test_a_big_upload_goes_up_in_parts_from_the_spooled_file(
    data_dir: Path, s3_bucket: S3Bucket
) -> None:
    part = 5 * 1024 * 1024  # the smallest part S3 takes
    container = s3_container(data_dir, s3_bucket.store_url)
    container.image_store.override(
        providers.Object(
            S3ImageStore(
                make_s3_client(), s3_bucket.store_url, multipart_threshold=part, part_bytes=part
            )
        )
    )
    app = create_app(container)
    app.testing = True
    client = app.test_client()
    noise = Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG", compress_level=0)
    data = buffer.getvalue()
    assert len(data) > part

    stored = upload(client, data, "noise.png")
    served = client.get(f"/images/{stored['id']}/file")

    assert served.data == data
    assert s3_bucket.object_keys() == [key_of(s3_bucket, str(stored["sha256"]), ".png")]
    uploads = make_s3_client().list_multipart_uploads(Bucket=s3_bucket.name)
    assert uploads.get("Uploads", []) == []
    assert stored_images(data_dir) == []
    container.repository().close()


def test_export_hf_imagefolder_copies_the_images_out_of_the_bucket(
    client: FlaskClient,
    data_dir: Path,
    tmp_path: Path,
    s3_bucket: S3Bucket,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = png_bytes((3, 1, 4), size=(120, 80))
    sha = str(upload(client, data)["sha256"])
    monkeypatch.setenv("CAPTIONER_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CAPTIONER_STORE_URL", s3_bucket.store_url)
    folder = tmp_path / "dataset"

    code = main(["export", "--hf-imagefolder", str(folder), "--model", "size-captioner"])

    assert code == 0, capsys.readouterr().err
    assert (folder / "train" / f"{sha}.png").read_bytes() == data
    (line,) = (folder / "train" / "metadata.jsonl").read_text().splitlines()
    assert '"text": "an image of 120x80"' in line
    assert stored_images(data_dir) == []


class OtherSizeCaptioner(SizeCaptioner):
    model_name = "other-size-captioner"


def test_recaption_reads_the_bytes_from_the_bucket_and_writes_none_again(
    client: FlaskClient, data_dir: Path, s3_bucket: S3Bucket
) -> None:
    data = png_bytes((2, 7, 1), size=(90, 60))
    upload(client, data)
    keys_before = s3_bucket.object_keys()
    container = s3_container(data_dir, s3_bucket.store_url)
    container.captioner.override(providers.Object(OtherSizeCaptioner()))
    try:
        service = container.service()
        (waiting,) = list(service.waiting_for_caption())
        result = service.recaption(waiting)
    finally:
        container.shutdown_resources()

    assert result.record.model == "other-size-captioner"
    assert result.record.description == "an image of 90x60"
    assert result.record.path == waiting.path
    assert s3_bucket.object_keys() == keys_before
    assert stored_images(data_dir) == []


def test_an_endpoint_lost_while_an_image_is_read_is_a_storage_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = S3Endpoint()
    endpoint.start()
    try:
        use_endpoint(monkeypatch, endpoint)
        bucket = new_bucket(endpoint)
        store = S3ImageStore(make_s3_client(timeout_s=TIMEOUT_S), bucket.store_url)
        data = png_bytes((5, 5, 5), size=(64, 64))
        path = store.save(ImageDigest.of_bytes(data), io.BytesIO(data), "png")
        stream = store.open(path)

        endpoint.stop()
        stream.seek(10)  # a reader that skips ahead (Pillow does) needs a ranged GET now

        with stream, pytest.raises(StorageUnavailable, match="does not answer"):
            stream.read()
    finally:
        endpoint.stop()
