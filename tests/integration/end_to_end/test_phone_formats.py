"""HEIC and AVIF photos through the three ways in: POST /upload, `captioner caption`, and
`import captioner`. The files are made by the tests with pillow-heif's and Pillow's encoders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from dependency_injector import providers
from flask.testing import FlaskClient
from PIL import Image

from captioner import ImageTooLarge, ImageUpload, InvalidImage, open_service
from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.cli import main
from captioner.entrypoints.http import create_app
from tests.integration.conftest import PHOTO_48MP
from tests.support.fakes import RecordingCaptioner
from tests.support.heif_images import avif, declaring_size, heic, solid, two_colour

RIGHT_TURN = 6


@pytest.fixture
def client(data_dir: Path) -> FlaskClient:
    container = build_container(Settings(data_dir=data_dir))
    container.captioner.override(providers.Object(RecordingCaptioner()))
    return create_app(container).test_client()


def upload(client: FlaskClient, data: bytes, name: str) -> tuple[int, dict[str, object]]:
    response = client.post("/upload", data={"image": (io.BytesIO(data), name)})
    body = response.get_json()
    assert isinstance(body, dict)
    return response.status_code, body


@pytest.mark.parametrize(
    ("make", "name", "content_type"),
    [(heic, "IMG_0001.HEIC", "image/heic"), (avif, "photo.avif", "image/avif")],
)
def test_phone_photo_upload_is_captioned_upright_and_its_original_kept(
    client: FlaskClient, make: object, name: str, content_type: str
) -> None:
    assert callable(make)
    data = make(two_colour((640, 320)), orientation=RIGHT_TURN)

    status, record = upload(client, data, name)

    assert status == 200, record
    assert record["content_type"] == content_type
    assert (record["width"], record["height"]) == (320, 640)  # upright
    assert str(record["path"]).endswith("." + content_type.split("/")[1])
    original = client.get(f"/images/{record['id']}/file")
    assert original.status_code == 200
    assert original.mimetype == content_type
    assert original.get_data() == data
    thumbnail = client.get(f"/images/{record['id']}/thumbnail")
    assert thumbnail.status_code == 200
    assert thumbnail.mimetype in ("image/webp", "image/jpeg")
    width, height = Image.open(io.BytesIO(thumbnail.get_data())).size
    assert height > width  # upright too


def test_a_48_megapixel_heic_upload_is_accepted(client: FlaskClient, heic_48mp: bytes) -> None:
    status, record = upload(client, heic_48mp, "IMG_4800.HEIC")

    assert status == 200, record
    assert (record["width"], record["height"]) == PHOTO_48MP


def test_a_heic_bomb_upload_is_refused_as_too_large(client: FlaskClient) -> None:
    status, body = upload(client, declaring_size(heic(solid((64, 64))), 90_000, 90_000), "b.heic")

    assert status == 413
    assert "90000x90000" in str(body["error"])


@pytest.mark.parametrize(("make", "name"), [(heic, "cut.heic"), (avif, "cut.avif")])
def test_a_cut_short_heic_or_avif_upload_is_a_422(
    client: FlaskClient, make: object, name: str
) -> None:
    assert callable(make)
    data = make(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48))

    status, body = upload(client, data[: len(data) * 3 // 4], name)

    assert status == 422
    assert "damaged or truncated" in str(body["error"])


def test_caption_command_describes_heic_and_avif_files_and_picks_them_from_folders(
    tmp_path: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "phone"
    photos.mkdir()
    (photos / "IMG_0001.HEIC").write_bytes(heic(two_colour(), orientation=RIGHT_TURN))
    (photos / "IMG_0002.avif").write_bytes(avif(solid((48, 48))))

    code = main(
        [
            *("caption", "--json", "--model", str(tiny_blip_dir)),
            *("--data-dir", str(data_dir), str(photos)),
        ]
    )

    out, err = capsys.readouterr()
    assert code == 0, err
    lines = {Path(line["file"]).name: line for line in map(json.loads, out.splitlines())}
    assert set(lines) == {"IMG_0001.HEIC", "IMG_0002.avif"}
    assert lines["IMG_0001.HEIC"]["content_type"] == "image/heic"
    assert (lines["IMG_0001.HEIC"]["width"], lines["IMG_0001.HEIC"]["height"]) == (32, 64)
    assert lines["IMG_0002.avif"]["content_type"] == "image/avif"
    assert all(line["description"].strip() for line in lines.values())


def test_library_describes_a_heic_and_refuses_damaged_or_huge_ones(
    data_dir: Path, tiny_blip_dir: Path
) -> None:
    photo = heic(two_colour(), orientation=RIGHT_TURN)

    with open_service(data_dir=data_dir, model=str(tiny_blip_dir)) as service:
        service.wait_until_ready()
        record = service.describe(ImageUpload(io.BytesIO(photo), original_name="a.heic")).record
        with pytest.raises(InvalidImage):
            service.describe(ImageUpload(io.BytesIO(photo[: len(photo) // 2])))
        with pytest.raises(ImageTooLarge):
            service.describe(ImageUpload(io.BytesIO(declaring_size(photo, 70_000, 70_000))))

    assert record.description.strip()
    assert (record.content_type, record.width, record.height) == ("image/heic", 32, 64)
