"""Hostile uploads against the real app and adapters: refused clearly, nothing stored, never 5xx."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from dependency_injector import providers
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from werkzeug.test import TestResponse

from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.errors import InvalidImage
from captioner.domain.model import DecodedImage
from captioner.entrypoints.http import create_app
from tests.support.data_dir import rows, snapshot, stored_images
from tests.support.fakes import RecordingCaptioner
from tests.support.live_server import serving

STORED_PATH = re.compile(r"^uploads/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.[a-z]{3,4}$")
MB = 1024 * 1024


# --- the world: real app, real decoder, store and database; only the model is a fake ----------


@dataclass
class World:
    app: Flask
    client: FlaskClient
    captioner: RecordingCaptioner
    data_dir: Path

    def upload(
        self, data: bytes, name: str = "photo.png", content_type: str | None = None
    ) -> TestResponse:
        file = (
            (io.BytesIO(data), name)
            if content_type is None
            else (
                io.BytesIO(data),
                name,
                content_type,
            )
        )
        return self.client.post("/upload", data={"image": file})

    def seen(self) -> DecodedImage:
        """What the model was handed last."""
        return self.captioner.images[-1]


def make_world(data_dir: Path, settings: Settings | None = None) -> World:
    container = build_container(settings or Settings(data_dir=data_dir))
    captioner = RecordingCaptioner()
    container.captioner.override(providers.Object(captioner))
    app = create_app(container)
    return World(app, app.test_client(), captioner, data_dir)


@pytest.fixture
def world(tmp_path: Path) -> World:
    # Two levels below tmp_path, so a file escaping the data dir would still land where we look.
    return make_world(tmp_path / "sandbox" / "data")


def assert_refused(response: TestResponse, status: int, *words: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    # Only a request without its image also says how to send one (the seed's error kept).
    assert set(body) == ({"error", "hint"} if "hint" in body else {"error"})
    message = body["error"]
    if "hint" in body:
        assert message == "No image file provided"
        assert "'image'" in body["hint"]
    assert isinstance(message, str)
    assert len(message) > 20, message
    assert "Traceback" not in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


# --- image makers --------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows_data: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows_data))
        + png_chunk(b"IEND", b"")
    )


def png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: ~17 KB on disk."""
    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


PNG = encoded(Image.new("RGB", (64, 48), (200, 30, 30)), "PNG")
JPEG = encoded(noise((64, 48)), "JPEG", quality=90)


# --- refused: not an image, damaged, or too big ----------------------------------------------

REFUSED: dict[str, tuple[bytes, int, tuple[str, ...]]] = {
    "empty": (b"", 422, ("empty",)),
    "text": (b"just some words, not a picture\n" * 4, 415, ("not a supported image",)),
    "html": (
        b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
        415,
        ("HTML",),
    ),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        415,
        ("SVG",),
    ),
    "svg with xml prolog": (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        415,
        ("XML",),
    ),
    "php": (b"<?php system($_GET['c']); ?>", 415, ("PHP",)),
    "zip": (
        b"PK\x03\x04" + bytes(26) + b"evil.sh" + random.Random(2).randbytes(200),
        415,
        ("zip",),
    ),
    "elf": (
        b"\x7fELF\x02\x01\x01\x00" + bytes(56) + random.Random(3).randbytes(200),
        415,
        ("executable",),
    ),
    "pdf": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", 415, ("PDF",)),
    "heic header without its boxes": (
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        422,
        ("HEIC", "damaged"),
    ),
    "mp4 video": (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64), 415, ("video",)),
    "random bytes": (random.Random(4).randbytes(4096), 415, ("not a supported image",)),
    "png signature then garbage": (PNG[:8] + random.Random(5).randbytes(2000), 422, ("PNG",)),
    "jpeg signature then garbage": (JPEG[:4] + random.Random(6).randbytes(2000), 422, ("damaged",)),
    "gif signature then garbage": (b"GIF89a" + random.Random(7).randbytes(64), 422, ("GIF",)),
    "png cut in its pixel data": (PNG[: len(PNG) - 30], 422, ("truncated",)),
    "png cut in its header": (PNG[:20], 422, ("PNG",)),
    "jpeg cut in its pixel data": (JPEG[: len(JPEG) * 2 // 3], 422, ("truncated",)),
    "jpeg cut in its header": (JPEG[:100], 422, ("damaged",)),
    "12000x12000 png bomb": (png_bomb(), 413, ("12000x12000", "64,000,000 pixels")),
    "20000x20000 png bomb, past pillow's own limit": (png_bomb(20000, 20000), 413, ("pixels",)),
    "zero-height png": (png_header_only(10, 0), 422, ()),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_hostile_file_is_refused_with_a_clear_json_error_and_nothing_changes(
    world: World, case: str
) -> None:
    assert world.upload(PNG, "kept.png").status_code == 200
    before = snapshot(world.data_dir)
    data, status, words = REFUSED[case]

    response = world.upload(data, "innocent.jpg", "image/jpeg")

    assert_refused(response, status, *words)
    assert snapshot(world.data_dir) == before
    assert world.captioner.call_count == 1


def test_a_png_bomb_is_refused_from_its_header_without_decoding_it(world: World) -> None:
    bomb = png_bomb()
    assert len(bomb) < 20_000
    reset_peak_memory()
    baseline = resident_mb()

    response = world.upload(bomb, "bomb.png")

    # Decoding would take 18 MB for the 1-bit pixels and 432 MB as RGB.
    assert peak_mb() - baseline < 12
    assert_refused(response, 413, "pixels")


def test_a_100_mb_body_is_spooled_to_disk_not_held_in_memory(tmp_path: Path) -> None:
    world = make_world(tmp_path / "data", Settings(data_dir=tmp_path / "data", max_upload_mb=150))
    body = ZeroFilledUpload(100 * MB, prefix=b"\x89PNG\r\n\x1a\n")
    before = snapshot(world.data_dir)
    reset_peak_memory()
    baseline = resident_mb()

    response = world.client.post(
        "/upload", input_stream=body, content_type=f"multipart/form-data; boundary={body.boundary}"
    )

    assert peak_mb() - baseline < 25
    assert_refused(response, 422, "PNG")
    assert body.position == body.size  # the whole body was read: the limit let it through
    assert snapshot(world.data_dir) == before


def test_big_uploads_wait_on_disk_inside_the_data_dir(world: World) -> None:
    big = encoded(noise((600, 600)), "PNG")
    assert len(big) > 512 * 1024
    spooled_at: list[str] = []

    with world.app.test_request_context(
        "/upload", method="POST", data={"image": (io.BytesIO(big), "big.png")}
    ):
        from flask import request

        stream = request.files["image"].stream
        spooled_at.append(os.readlink(f"/proc/self/fd/{stream.fileno()}"))

    assert spooled_at[0].startswith(str(world.data_dir.resolve()))
    assert stored_images(world.data_dir) == []


# --- accepted: every allowed format, decoded to upright 8-bit RGB for the model --------------


def exif_rotated_jpeg() -> bytes:
    """40x20 as stored, red left and blue right; EXIF orientation 6 shows it turned to 20x40."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    frames = [
        Image.new("RGB", (16, 12), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multi_picture_jpeg() -> bytes:
    """An MPO: a JPEG with a second picture appended, as phones and cameras write them."""
    first, second = Image.new("RGB", (30, 20), (0, 200, 0)), Image.new("RGB", (30, 20), (200, 0, 0))
    return encoded(first, "MPO", save_all=True, append_images=[second])


def palette_with_transparency() -> bytes:
    """Left half transparent (palette entry 0), right half opaque red (entry 1)."""
    image = Image.new("P", (20, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (10, 0, 20, 10))
    return encoded(image, "PNG", transparency=0)


def grey16_png(value: int) -> bytes:
    return raw_png(4, 3, 16, 0, b"".join(b"\x00" + struct.pack(">H", value) * 4 for _ in range(3)))


def rgb16_png() -> bytes:
    row = b"\x00" + struct.pack(">HHH", 65535, 32768, 0) * 4
    return raw_png(4, 3, 16, 2, row * 3)


def grey16_big_endian_tiff(value: int) -> bytes:
    return encoded(Image.new("I;16B", (5, 4), value), "TIFF")


Probe = Callable[[Image.Image], None]


def colour_near(
    expected: tuple[int, int, int], at: tuple[int, int] = (1, 1), slack: int = 12
) -> Probe:
    def probe(pixels: Image.Image) -> None:
        actual = pixels.getpixel(at)
        assert isinstance(actual, tuple)
        assert all(abs(a - e) <= slack for a, e in zip(actual, expected, strict=True)), actual

    return probe


def upright_red_over_blue(pixels: Image.Image) -> None:
    colour_near((255, 0, 0), at=(10, 5))(pixels)
    colour_near((0, 0, 255), at=(10, 35))(pixels)


def white_left_red_right(pixels: Image.Image) -> None:
    colour_near((255, 255, 255), at=(2, 5), slack=0)(pixels)
    colour_near((255, 0, 0), at=(15, 5), slack=0)(pixels)


ACCEPTED: dict[str, tuple[Callable[[], bytes], str, tuple[int, int], Probe]] = {
    "png": (lambda: PNG, "image/png", (64, 48), colour_near((200, 30, 30), slack=0)),
    "jpeg": (lambda: JPEG, "image/jpeg", (64, 48), lambda pixels: None),
    "exif-rotated jpeg": (exif_rotated_jpeg, "image/jpeg", (20, 40), upright_red_over_blue),
    "multi-picture jpeg (mpo)": (
        multi_picture_jpeg,
        "image/jpeg",
        (30, 20),
        colour_near((0, 200, 0)),
    ),
    "cmyk jpeg": (
        lambda: encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
        "image/jpeg",
        (16, 16),
        colour_near((255, 0, 0), slack=20),
    ),
    "grayscale png": (
        lambda: encoded(Image.new("L", (8, 8), 77), "PNG"),
        "image/png",
        (8, 8),
        colour_near((77, 77, 77), slack=0),
    ),
    "16-bit grayscale png": (
        lambda: grey16_png(40000),
        "image/png",
        (4, 3),
        colour_near((156, 156, 156), slack=1),
    ),
    "16-bit rgb png": (rgb16_png, "image/png", (4, 3), colour_near((255, 128, 0), slack=1)),
    "16-bit big-endian tiff": (
        lambda: grey16_big_endian_tiff(40000),
        "image/tiff",
        (5, 4),
        colour_near((156, 156, 156), slack=1),
    ),
    "palette png with transparency": (
        palette_with_transparency,
        "image/png",
        (20, 10),
        white_left_red_right,
    ),
    "rgba png": (
        lambda: encoded(Image.new("RGBA", (8, 8), (0, 0, 255, 0)), "PNG"),
        "image/png",
        (8, 8),
        colour_near((255, 255, 255), slack=0),
    ),
    "animated gif (first frame)": (
        animated_gif,
        "image/gif",
        (16, 12),
        colour_near((255, 0, 0), slack=8),
    ),
    "bmp": (
        lambda: encoded(Image.new("RGB", (9, 7), (10, 20, 30)), "BMP"),
        "image/bmp",
        (9, 7),
        colour_near((10, 20, 30), slack=0),
    ),
    "tiff": (
        lambda: encoded(Image.new("RGB", (9, 7), (40, 50, 60)), "TIFF"),
        "image/tiff",
        (9, 7),
        colour_near((40, 50, 60), slack=0),
    ),
    "webp": (
        lambda: encoded(Image.new("RGB", (9, 7), (70, 80, 90)), "WEBP", lossless=True),
        "image/webp",
        (9, 7),
        colour_near((70, 80, 90), slack=0),
    ),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_allowed_image_is_stored_as_sent_and_the_model_sees_upright_8_bit_rgb(
    world: World, case: str
) -> None:
    make, content_type, size, probe = ACCEPTED[case]
    data = make()

    response = world.upload(data, "upload.bin", "application/octet-stream")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["content_type"] == content_type
    assert (body["width"], body["height"]) == size
    assert (world.data_dir / body["path"]).read_bytes() == data
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    pixels = world.seen().pixels
    assert isinstance(pixels, Image.Image)
    assert pixels.mode == "RGB"
    assert pixels.size == size
    probe(pixels)


def test_photos_of_several_hundred_kilobytes_are_accepted_over_real_http(world: World) -> None:
    # Noise compresses badly, like a real photo: its bytes hold the CR and LF that make
    # werkzeug keep a tail back while it looks for the boundary.
    photos = [encoded(noise((side, side), seed=side), "JPEG", quality=95) for side in (600, 700)]
    assert all(len(photo) > 300 * 1024 for photo in photos)

    with serving(world.app) as url:
        responses = [
            requests.post(f"{url}/upload", files={"image": ("photo.jpg", photo)}, timeout=30)
            for photo in photos
        ]

    assert [response.status_code for response in responses] == [200, 200], responses[0].text
    assert len(stored_images(world.data_dir)) == 2


def test_file_type_comes_from_the_bytes_not_the_name_or_content_type(world: World) -> None:
    disguised_image = world.upload(PNG, "setup.exe", "application/x-msdownload")
    disguised_page = world.upload(b"<html><script>x()</script></html>", "cat.jpg", "image/jpeg")

    assert disguised_image.status_code == 200
    assert disguised_image.get_json()["content_type"] == "image/png"
    assert disguised_image.get_json()["path"].endswith(".png")
    assert_refused(disguised_page, 415, "HTML")


# --- file names are metadata only ---------------------------------------------------------

HOSTILE_NAMES = {
    "parent traversal": "../../x",
    "deep traversal": "../../../../../../etc/cron.d/evil.png",
    "absolute path": "/etc/passwd",
    "windows absolute path": "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "nul byte": "cat.png\x00.php",
    "2000 characters": "a" * 1996 + ".png",
    "unicode": "ünïcødé-图片-🐱.png",
    "right-to-left override": "photo\u202egnp.exe",
    "windows device": "CON",
    "windows device with extension": "AUX.jpg",
    "dots only": "..",
    "shell metacharacters": "$(rm -rf ~);`id`|x.png",
}


@pytest.mark.parametrize("case", list(HOSTILE_NAMES))
def test_client_file_name_never_chooses_where_the_file_goes(
    world: World, tmp_path: Path, case: str
) -> None:
    data = encoded(Image.new("RGB", (4, 4), (list(HOSTILE_NAMES).index(case), 9, 9)), "PNG")

    response = world.upload(data, HOSTILE_NAMES[case])

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    digest = hashlib.sha256(data).hexdigest()
    assert body["path"] == f"uploads/{digest[:2]}/{digest[2:4]}/{digest}.png"
    name = body["original_name"]
    if name is not None:
        assert len(name) <= 255
        assert "/" not in name
        assert "\\" not in name
        assert all(ch.isprintable() for ch in name)
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(world.data_dir) for p in everything), everything
    assert stored_images(world.data_dir) == [body["path"]]


# --- malformed requests ---------------------------------------------------------------------

BOUNDARY = "hostile-boundary"


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """Encode (field, filename, content) parts by hand, to send what no well-behaved client does."""
    body = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


FORM = f"multipart/form-data; boundary={BOUNDARY}"
GOOD_BODY = multipart(("image", "a.png", PNG))
MALFORMED: dict[str, tuple[bytes, str, int]] = {
    "no closing boundary": (GOOD_BODY[: -len(f"--{BOUNDARY}--\r\n")], FORM, 400),
    "body cut mid-part": (GOOD_BODY[: len(GOOD_BODY) // 2], FORM, 400),
    "boundary missing from the content type": (GOOD_BODY, "multipart/form-data", 400),
    "another boundary in the body": (GOOD_BODY, "multipart/form-data; boundary=other", 400),
    "garbage body": (random.Random(8).randbytes(3000), FORM, 400),
    "part headers never end": (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"'.encode(),
        FORM,
        400,
    ),
    "non-UTF-8 bytes in the file name": (
        GOOD_BODY.replace(b'filename="a.png"', b'filename="\xff\xfe\x80.png"'),
        FORM,
        400,
    ),
    "json instead of a form": (b'{"image": "iVBORw0KGgo="}', "application/json", 400),
    "raw image, no form": (PNG, "image/png", 400),
    "image sent as a text field": (multipart(("image", None, PNG)), FORM, 400),
    "a 300 KB text field": (
        multipart(("prompt", None, b"p" * 300_000), ("image", "a.png", PNG)),
        FORM,
        413,
    ),
    "a hundred form parts": (
        b"".join(
            multipart((f"f{i}", None, b"v"))[: -len(f"--{BOUNDARY}--\r\n")] for i in range(100)
        )
        + GOOD_BODY,
        FORM,
        413,
    ),
    "a 300 KB part header": (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{"a" * 300_000}"'
        f"\r\n\r\n".encode()
        + PNG
        + f"\r\n--{BOUNDARY}--\r\n".encode(),
        FORM,
        413,
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_4xx_json_error_and_nothing_changes(world: World, case: str) -> None:
    assert world.upload(PNG).status_code == 200
    before = snapshot(world.data_dir)
    body, content_type, status = MALFORMED[case]

    response = world.client.post("/upload", data=body, content_type=content_type)

    assert_refused(response, status)
    assert snapshot(world.data_dir) == before


def test_upload_without_length_that_runs_over_the_limit_is_a_413_over_real_http(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path / "data", Settings(data_dir=tmp_path / "data", max_upload_mb=1))
    before = snapshot(world.data_dir)

    def chunked_body() -> Iterator[bytes]:
        whole = multipart(("image", "a.png", b"\x89PNG" + bytes(3 * MB)))
        for start in range(0, len(whole), 64 * 1024):  # no Content-Length: sent in chunks
            yield whole[start : start + 64 * 1024]

    with serving(world.app) as url:
        response = requests.post(
            f"{url}/upload", data=chunked_body(), headers={"Content-Type": FORM}, timeout=30
        )
        after = requests.post(f"{url}/upload", files={"image": ("a.png", PNG)}, timeout=30)

    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413
    assert "1 MB" in response.json()["error"]
    assert after.status_code == 200
    assert stored_images(world.data_dir) == [after.json()["path"]]
    assert len(rows(world.data_dir)) == 1
    assert before[1] == []


# --- the limits are settings, and they hold end to end -----------------------------------


def test_upload_and_pixel_limits_come_from_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {
        "CAPTIONER_DATA_DIR": str(data_dir),
        "CAPTIONER_MAX_UPLOAD_MB": "0.5",
        "CAPTIONER_MAX_PIXELS": "1000",
    }
    world = make_world(data_dir, Settings.load(environ=env))
    small = encoded(Image.new("RGB", (25, 40), (1, 2, 3)), "PNG")  # exactly 1000 pixels
    wide = encoded(Image.new("RGB", (41, 25), (1, 2, 3)), "PNG")  # 1025 pixels
    heavy = random.Random(9).randbytes(600 * 1024)

    assert world.upload(small).status_code == 200
    assert_refused(world.upload(wide), 413, "41x25", "1,000 pixels")
    assert_refused(world.upload(heavy), 413, "512 KB")
    assert len(rows(data_dir)) == 1


def test_a_pixel_limit_above_pillows_own_is_the_one_that_counts() -> None:
    decoder = PillowImageDecoder(max_pixels=200_000_000)
    # 180 megapixels: over twice Pillow's default limit, under ours. Only the header is
    # real, so decoding stops at the missing pixel data instead of allocating them.
    header_only = png_header_only(15000, 12000)

    with pytest.raises(InvalidImage, match="damaged or truncated"):
        decoder.decode(io.BytesIO(header_only))


# --- property: whatever arrives, never a 5xx, never a file outside, rows == files ------------

SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]
SAMPLES = [
    PNG,
    JPEG,
    exif_rotated_jpeg(),
    animated_gif(),
    multi_picture_jpeg(),
    palette_with_transparency(),
    rgb16_png(),
    grey16_big_endian_tiff(1234),
    encoded(Image.new("RGB", (6, 5), (1, 2, 3)), "BMP"),
    encoded(Image.new("RGB", (6, 5), (1, 2, 3)), "WEBP"),
    encoded(Image.new("RGB", (6, 5), (1, 2, 3)), "TIFF"),
]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, random bytes behind an image signature, or a real image with damage."""
    kind = draw(st.sampled_from(["random", "signature", "damaged"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "signature":
        return draw(st.sampled_from(SIGNATURES)) + draw(st.binary(max_size=1024))
    sample = draw(st.sampled_from(SAMPLES))
    start = draw(st.integers(0, len(sample)))
    end = draw(st.integers(start, min(len(sample), start + 64)))
    return sample[:start] + draw(st.binary(max_size=64)) + sample[end:]


file_names = st.one_of(
    st.text(max_size=2100),
    st.sampled_from(list(HOSTILE_NAMES.values())),
    st.lists(st.sampled_from(["..", ".", "/", "\\", "\x00", "CON", "x.png", "é"]), max_size=12).map(
        "".join
    ),
)


def test_any_bytes_under_any_name_never_5xx_never_escape_and_rows_match_files(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path / "sandbox" / "data")
    statuses: set[int] = set()

    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )
    @given(data=hostile_bytes(), name=file_names)
    def upload_anything(data: bytes, name: str) -> None:
        response = world.upload(data, name)
        statuses.add(response.status_code)
        assert response.status_code < 500, (response.status_code, response.get_json())
        assert isinstance(
            response.get_json().get("error", response.get_json().get("id")), str | int
        )

    upload_anything()

    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(world.data_dir) for p in everything), everything
    images = stored_images(world.data_dir)
    catalogue = rows(world.data_dir)
    assert len(catalogue) == len(images)
    for path in images:
        match = STORED_PATH.match(path)
        assert match, path
        assert hashlib.sha256((world.data_dir / path).read_bytes()).hexdigest() == match[3]
    assert {row[2] for row in catalogue} == set(images)
    assert 200 in statuses
    assert statuses & {415, 422}


# --- memory measurement (Linux: peak resident set, resettable through /proc) -------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not in /proc/self/status")


def reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size


def resident_mb() -> float:
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


class ZeroFilledUpload(io.RawIOBase):
    """A multipart body with one file part of ``size`` bytes, made up as it is read."""

    boundary = "zero-filled-boundary"

    def __init__(self, size: int, prefix: bytes = b"") -> None:
        self._head = (
            f"--{self.boundary}\r\n"
            'Content-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        ).encode() + prefix
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._zeros = size - len(prefix)
        self.size = len(self._head) + self._zeros + len(self._tail)
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self.size - self.position)
        if wanted <= 0:
            return 0
        head_end = len(self._head)
        zeros_end = head_end + self._zeros
        out = bytearray()
        at = self.position
        while len(out) < wanted:
            if at < head_end:
                piece = self._head[at:head_end]
            elif at < zeros_end:
                piece = bytes(min(zeros_end - at, wanted - len(out)))
            else:
                piece = self._tail[at - zeros_end :]
            piece = piece[: wanted - len(out)]
            out += piece
            at += len(piece)
        buffer[:wanted] = out
        self.position = at
        return wanted
