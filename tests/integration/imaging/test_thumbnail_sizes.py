"""Thumbnails of real-sized photos, decoded only as large as the thumbnail needs: upright, the
right size, and refused with a clear error when damaged or too big."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from captioner.adapters.imaging.thumbnails import render_thumbnail
from captioner.domain.errors import InvalidImage
from tests.support.heif_images import heic, jpeg, two_colour

PHOTO_12MP = (4032, 3024)
RIGHT_TURN = 6  # EXIF: viewers turn the picture a quarter clockwise


def thumbnail_of(data: bytes, **options: int) -> Image.Image:
    image = Image.open(io.BytesIO(render_thumbnail(io.BytesIO(data), **options)))
    image.load()
    return image


def colour_at(image: Image.Image, x: int, y: int) -> str:
    pixel = image.convert("RGB").getpixel((x, y))
    assert isinstance(pixel, tuple)
    red, _, blue = (int(value) for value in pixel)
    return "red" if red > 150 > blue else "blue" if blue > 150 > red else "other"


@pytest.fixture(scope="module")
def turned_12mp() -> Image.Image:
    """A 12 MP picture stored as a phone held upright stores it: landscape, red left half."""
    return two_colour(PHOTO_12MP)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda image: jpeg(image, orientation=RIGHT_TURN), id="jpeg"),
        pytest.param(lambda image: heic(image, orientation=RIGHT_TURN), id="heic"),
    ],
)
def test_thumbnail_of_a_turned_12_megapixel_photo_is_upright_and_320_pixels_high(
    turned_12mp: Image.Image, encode: object
) -> None:
    assert callable(encode)

    thumbnail = thumbnail_of(encode(turned_12mp))

    assert thumbnail.format == "WEBP"
    assert thumbnail.size == (240, 320)
    # Turned a quarter clockwise: the red left half is on top.
    assert colour_at(thumbnail, 120, 20) == "red"
    assert colour_at(thumbnail, 120, 300) == "blue"


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda image: jpeg(image), id="jpeg"),
        pytest.param(lambda image: heic(image), id="heic"),
    ],
)
def test_a_truncated_12_megapixel_photo_gets_a_clear_error_not_a_thumbnail(
    turned_12mp: Image.Image, encode: object
) -> None:
    assert callable(encode)
    data = encode(turned_12mp)

    with pytest.raises(InvalidImage, match="No thumbnail could be made of this image"):
        render_thumbnail(io.BytesIO(data[: len(data) * 2 // 3]))


def test_a_photo_over_the_pixel_limit_is_refused_from_its_header() -> None:
    data = jpeg(two_colour((400, 300)))

    with pytest.raises(InvalidImage, match=r"too many pixels \(400x300\)"):
        render_thumbnail(io.BytesIO(data), max_pixels=100_000)
