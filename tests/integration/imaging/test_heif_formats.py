"""HEIC, HEIF and AVIF through the real decoder and thumbnail renderer: the same guarantees as
JPEG and PNG (type from the bytes, limits from the header, upright, 8-bit RGB, damage is 422)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from captioner.adapters.imaging import heif
from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.adapters.imaging.thumbnails import render_thumbnail
from captioner.domain.errors import ImageTooLarge, InvalidImage, UnsupportedImageType
from captioner.domain.model import DecodedImage
from tests.integration.conftest import PHOTO_48MP
from tests.support.heif_images import (
    avif,
    declaring_size,
    heic,
    heic_10bit,
    heic_burst,
    solid,
    two_colour,
)

RIGHT_TURN = 6  # EXIF: the camera was turned 90°; viewers turn the picture back


def decode(data: bytes, max_pixels: int = 64_000_000) -> DecodedImage:
    return PillowImageDecoder(max_pixels).decode(io.BytesIO(data))


def pixels_of(image: DecodedImage) -> Image.Image:
    assert isinstance(image.pixels, Image.Image)
    return image.pixels


def rgb_at(image: DecodedImage, x: int, y: int) -> tuple[int, int, int]:
    pixel = pixels_of(image).getpixel((x, y))
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def is_reddish(pixel: tuple[int, int, int]) -> bool:
    return pixel[0] > 150 and pixel[2] < 100


def is_bluish(pixel: tuple[int, int, int]) -> bool:
    return pixel[2] > 150 and pixel[0] < 100


@pytest.mark.parametrize(
    ("make", "fmt", "content_type", "extension"),
    [(heic, "HEIC", "image/heic", "heic"), (avif, "AVIF", "image/avif", "avif")],
)
def test_heic_and_avif_are_recognised_from_their_bytes_and_handed_over_as_8bit_rgb(
    make: object, fmt: str, content_type: str, extension: str
) -> None:
    assert callable(make)
    image = decode(make(two_colour((64, 32))))

    assert (image.format, image.content_type, image.extension) == (fmt, content_type, extension)
    assert (image.width, image.height) == (64, 32)
    assert pixels_of(image).mode == "RGB"
    assert is_reddish(rgb_at(image, 4, 16))
    assert is_bluish(rgb_at(image, 60, 16))


@pytest.mark.parametrize("make", [heic, avif])
def test_a_turned_photo_is_handed_over_upright_with_its_upright_size(make: object) -> None:
    assert callable(make)
    image = decode(make(two_colour((64, 32)), orientation=RIGHT_TURN))

    # Turned a quarter clockwise: the red left half is now on top.
    assert (image.width, image.height) == (32, 64)
    assert pixels_of(image).size == (32, 64)
    assert is_reddish(rgb_at(image, 16, 4))
    assert is_bluish(rgb_at(image, 16, 60))


def test_a_48_megapixel_iphone_sized_heic_in_tiles_is_decoded_whole(heic_48mp: bytes) -> None:
    started = time.perf_counter()
    image = decode(heic_48mp)

    assert (image.width, image.height) == PHOTO_48MP
    assert rgb_at(image, 8000, 6000) == rgb_at(image, 10, 10)
    assert time.perf_counter() - started < 15


def test_a_heic_declaring_billions_of_pixels_is_refused_from_its_header() -> None:
    bomb = declaring_size(heic(solid((64, 64))), 100_000, 100_000)

    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"100000x100000.*64,000,000 pixels"):
        decode(bomb)
    assert time.perf_counter() - started < 1


def test_a_tiled_heic_whose_grid_declares_too_many_pixels_is_refused_before_decoding() -> None:
    # 1024x1024 in 512-pixel tiles, refused under a 1-megapixel limit: the grid's own size
    # counts, not only one tile's.
    tiled = heic(solid((1024, 1024)), tile_size=512)

    with pytest.raises(ImageTooLarge, match="1024x1024"):
        decode(tiled, max_pixels=1_000_000)
    assert decode(tiled, max_pixels=1_048_576).width == 1024


def test_an_avif_over_the_pixel_limit_is_refused_with_the_too_large_error() -> None:
    with pytest.raises(ImageTooLarge, match="2000x1000"):
        decode(avif(solid((2000, 1000))), max_pixels=1_000_000)


@pytest.mark.parametrize("make", [heic, avif])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.98])
def test_a_cut_short_file_is_refused_as_damaged(make: object, keep: float) -> None:
    assert callable(make)
    data = make(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48))

    with pytest.raises(InvalidImage, match="damaged or truncated"):
        decode(data[: int(len(data) * keep)])


def test_a_cut_short_48_megapixel_heic_is_refused_though_libheif_would_fill_the_gap(
    heic_48mp: bytes,
) -> None:
    with pytest.raises(InvalidImage, match="HEIC image but is damaged or truncated"):
        decode(heic_48mp[: len(heic_48mp) // 2])


def test_heic_whose_decoder_set_up_is_garbage_is_refused_as_damaged() -> None:
    # libde265 decodes garbled picture data without complaint (as Pillow does many a JPEG);
    # garbled decoder configuration (the hvcC box: parameter sets) it cannot.
    data = bytearray(heic(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)))
    start = data.find(b"hvcC") + 4
    data[start : start + 40] = bytes(range(7, 47))

    with pytest.raises(InvalidImage):
        decode(bytes(data))


def test_a_heic_header_without_its_boxes_is_damaged_not_unsupported() -> None:
    with pytest.raises(InvalidImage, match="HEIC"):
        decode(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))


def test_a_video_is_refused_as_a_video() -> None:
    with pytest.raises(UnsupportedImageType, match="video"):
        decode(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(200))


def test_a_burst_is_described_by_its_first_image() -> None:
    image = decode(heic_burst(solid((48, 32), (220, 20, 20)), solid((96, 64), (20, 20, 220))))

    assert (image.width, image.height) == (48, 32)
    assert is_reddish(rgb_at(image, 10, 10))


def test_a_10bit_hdr_heic_is_handed_over_as_8bit_rgb_with_its_colour() -> None:
    # 16-bit samples: 60000/65535 is 234/255.
    image = decode(heic_10bit((64, 32), (60000, 8000, 8000)))

    assert pixels_of(image).mode == "RGB"
    red, green, blue = rgb_at(image, 32, 16)
    assert red > 200
    assert green < 60
    assert blue < 60


def test_a_heif_with_another_brand_than_heic_is_named_by_its_brand() -> None:
    assert heif.brand_format(b"\x00\x00\x00\x10ftypmif1\x00\x00\x00\x00") == "HEIF"
    assert heif.brand_format(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic") == "HEIC"
    assert heif.brand_format(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif") == "AVIF"
    assert heif.brand_format(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp41") is None


def test_libheifs_own_security_refusal_counts_as_too_large() -> None:
    assert heif.is_size_refusal(RuntimeError("Security limit exceeded: too many tiles"))
    assert not heif.is_size_refusal(RuntimeError("Invalid input: bitstream"))


@pytest.mark.parametrize("make", [heic, avif])
def test_thumbnail_of_heic_and_avif_is_an_upright_webp(make: object) -> None:
    assert callable(make)
    data = make(two_colour((640, 320)), orientation=RIGHT_TURN)

    thumbnail = Image.open(io.BytesIO(render_thumbnail(io.BytesIO(data), size=100)))

    assert thumbnail.format == "WEBP"
    assert thumbnail.size == (50, 100)


_SEED_HEIC = heic(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48), orientation=3)
_SEED_AVIF = avif(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from([_SEED_HEIC, _SEED_AVIF]),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 5000),
)
def test_a_mangled_heic_or_avif_is_decoded_or_refused_never_an_internal_error(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seed[: max(cut, 16)])
    for position, value in flips:
        if position < len(data):
            data[position] = value

    started = time.perf_counter()
    try:
        image = decode(bytes(data))
    except (InvalidImage, ImageTooLarge, UnsupportedImageType):
        pass
    else:
        assert pixels_of(image).mode == "RGB"
        assert image.width * image.height <= 64_000_000
    assert time.perf_counter() - started < 2


def test_a_header_asking_for_endless_extents_is_refused_quickly() -> None:
    # An iloc box of zero-width fields: 60000 items of 65535 extents each cost no bytes.
    items = b"".join(struct.pack(">HHH", item, 0, 0xFFFF) for item in range(1, 60_001))
    iloc = b"\x00\x00\x00\x00" + bytes([0x00, 0x00]) + struct.pack(">H", 60_000) + items
    meta_body = b"\x00\x00\x00\x00" + struct.pack(">I4s", 8 + len(iloc), b"iloc") + iloc
    data = (
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
        + struct.pack(">I4s", 8 + len(meta_body), b"meta")
        + meta_body
    )

    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="extents"):
        decode(data)
    assert time.perf_counter() - started < 1


def test_an_animated_avif_is_described_by_its_first_frame() -> None:
    frames = [solid((48, 32), (220, 20, 20)), solid((48, 32), (20, 20, 220))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "AVIF", save_all=True, append_images=frames[1:], duration=100)

    image = decode(buffer.getvalue())

    assert image.format == "AVIF"
    assert is_reddish(rgb_at(image, 10, 10))


def test_a_sequence_kept_only_as_a_track_is_left_to_the_codec_not_called_damaged() -> None:
    track_only = (
        b"\x00\x00\x00\x18ftypavis\x00\x00\x00\x00avismsf1"
        + struct.pack(">I4s", 16, b"moov")
        + bytes(8)
    )

    header = heif.read_header(io.BytesIO(track_only), track_only)

    assert header == heif.HeifHeader("AVIF", 0, 0, 0)


# A HEIC mangled by the property test above; pi-heif 1.4.0 (libheif 1.23.0) crashed the whole
# process reading its metadata, which is why the service reads HEIC through pillow-heif.
CRASHED_PI_HEIF = Path(__file__).parent / "data" / "crashed-pi-heif.heic"
_DECODE_IN_CHILD = """
import io, sys
from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.domain.errors import InvalidImage
try:
    PillowImageDecoder().decode(io.BytesIO(open(sys.argv[1], "rb").read()))
except InvalidImage:
    pass
print("survived")
"""


def test_a_mangled_heic_that_crashed_pi_heif_does_not_crash_the_process() -> None:
    # In a child process: a crash there is this test failing, not the test run dying.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", _DECODE_IN_CHILD, str(CRASHED_PI_HEIF)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "survived"
