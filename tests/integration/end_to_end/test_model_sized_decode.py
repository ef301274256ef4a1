"""Uploads are decoded at the size the model asks for; records keep the photo's own size."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dependency_injector import providers
from flask.testing import FlaskClient
from PIL import Image

from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app
from tests.support.fakes import RecordingCaptioner
from tests.support.heif_images import heic, two_colour

RIGHT_TURN = 6


@pytest.fixture
def model() -> RecordingCaptioner:
    return RecordingCaptioner(edge=384)


@pytest.fixture
def client(data_dir: Path, model: RecordingCaptioner) -> FlaskClient:
    container = build_container(Settings(data_dir=data_dir))
    container.captioner.override(providers.Object(model))
    return create_app(container).test_client()


def _jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    two_colour(size).save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def _upload(client: FlaskClient, data: bytes, name: str) -> tuple[int, dict[str, object]]:
    response = client.post("/upload", data={"image": (io.BytesIO(data), name)})
    return response.status_code, response.get_json()


def _pixels_seen(model: RecordingCaptioner) -> tuple[int, int]:
    pixels = model.images[-1].pixels
    assert isinstance(pixels, Image.Image)
    return pixels.size


def test_a_turned_12_megapixel_jpeg_reaches_the_model_small_and_is_kept_whole(
    client: FlaskClient, model: RecordingCaptioner
) -> None:
    data = _jpeg((4032, 3024), RIGHT_TURN)

    status, record = _upload(client, data, "IMG_0001.JPG")

    assert status == 200, record
    assert (record["width"], record["height"]) == (3024, 4032)  # the photo, upright
    assert _pixels_seen(model) == (756, 1008)  # decoded at 1/4, still upright
    assert client.get(f"/images/{record['id']}/file").get_data() == data


def test_a_large_heic_is_reduced_for_the_model_too(
    client: FlaskClient, model: RecordingCaptioner
) -> None:
    status, record = _upload(client, heic(two_colour((2000, 1000))), "IMG_0002.HEIC")

    assert status == 200, record
    assert (record["width"], record["height"]) == (2000, 1000)
    assert _pixels_seen(model) == (1000, 500)
    turned = heic(two_colour((2000, 1000)), orientation=RIGHT_TURN)
    status, record = _upload(client, turned, "IMG_0003.HEIC")
    assert status == 200, record
    assert (record["width"], record["height"]) == (1000, 2000)
    assert _pixels_seen(model) == (500, 1000)


def test_a_truncated_large_jpeg_is_still_refused(client: FlaskClient) -> None:
    data = _jpeg((4032, 3024))

    status, body = _upload(client, data[: len(data) // 2], "cut.jpg")

    assert status == 422, body


def test_a_model_that_names_no_edge_gets_every_pixel(data_dir: Path) -> None:
    model = RecordingCaptioner()
    container = build_container(Settings(data_dir=data_dir))
    container.captioner.override(providers.Object(model))
    status, _ = _upload(create_app(container).test_client(), _jpeg((1600, 1200)), "a.jpg")

    assert status == 200
    assert _pixels_seen(model) == (1600, 1200)
