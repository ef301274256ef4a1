"""The Flask app with every real adapter and a tiny real model, through its test client."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.errors import CaptionerUnavailable
from captioner.entrypoints.http import create_app
from tests.conftest import png_bytes

pytestmark = pytest.mark.slow


def make_client(model_dir: Path, data_dir: Path) -> FlaskClient:
    settings = Settings(model=str(model_dir), data_dir=data_dir, max_new_tokens=6)
    container = build_container(settings)
    app = create_app(container)
    assert container.service().wait_until_ready(timeout=120).ready
    return app.test_client()


@pytest.fixture
def client(tiny_blip_dir: Path, data_dir: Path) -> FlaskClient:
    return make_client(tiny_blip_dir, data_dir)


def post(client: FlaskClient, data: bytes, name: str = "photo.png") -> dict[str, object]:
    response = client.post("/upload", data={"image": (io.BytesIO(data), name)})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def test_caption_duplicate_same_name_and_list_survive_a_restart(
    tiny_blip_dir: Path, data_dir: Path
) -> None:
    client = make_client(tiny_blip_dir, data_dir)
    red, blue = png_bytes((200, 0, 0)), png_bytes((0, 0, 200))

    first = post(client, red, "photo.png")
    again = post(client, red, "copy.png")
    other = post(client, blue, "photo.png")

    assert first["duplicate"] is False
    assert str(first["description"]).strip()
    assert again["duplicate"] is True
    assert again["description"] == first["description"]
    assert other["id"] != first["id"]
    assert (data_dir / str(first["path"])).read_bytes() == red
    assert (data_dir / str(other["path"])).read_bytes() == blue

    restarted = make_client(tiny_blip_dir, data_dir)
    listed = restarted.get("/images").get_json()
    assert [row["id"] for row in listed] == [other["id"], first["id"]]
    assert post(restarted, red)["duplicate"] is True
    served = restarted.get(f"/images/{first['id']}/file", buffered=True)
    assert served.data == red
    assert served.headers["Content-Type"] == "image/png"


def test_vision_encoder_decoder_model_serves_uploads(
    tiny_vit_gpt2_dir: Path, data_dir: Path
) -> None:
    client = make_client(tiny_vit_gpt2_dir, data_dir)
    body = post(client, png_bytes((0, 120, 0)))
    assert str(body["description"]).strip()
    assert body["model"] == str(tiny_vit_gpt2_dir)


def test_readyz_is_200_once_the_model_is_loaded(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ready"


def test_server_starts_and_lists_even_when_the_model_cannot_load(data_dir: Path) -> None:
    settings = Settings(model=str(data_dir / "missing-model"), data_dir=data_dir)
    container = build_container(settings)
    client = create_app(container).test_client()
    with pytest.raises(CaptionerUnavailable, match="missing-model"):
        container.service().wait_until_ready(timeout=60)

    ready = client.get("/readyz")
    upload = client.post("/upload", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    gallery = client.get("/").get_data(as_text=True)

    assert ready.status_code == 503
    assert "missing-model" in ready.get_json()["reason"]
    # Permanent: a restart with another model setting is needed, so nothing says retry.
    assert ready.get_json()["permanent"] is True
    assert "Retry-After" not in ready.headers
    assert upload.status_code == 503
    assert "missing-model" in upload.get_json()["error"]
    assert "CAPTIONER_MODEL" in upload.get_json()["error"]
    assert "restart" in upload.get_json()["error"]
    assert "Retry-After" not in upload.headers
    assert "The model failed to load" in gallery
    assert "no such model directory" in gallery
    assert client.get("/images").status_code == 200
    assert list(data_dir.rglob("*.png")) == []
