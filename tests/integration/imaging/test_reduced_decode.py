"""Decoding at the model's size: smaller pixels, same orientation, damaged files still refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.domain.errors import InvalidImage
from captioner.domain.model import DecodedImage
from tests.support.heif_images import jpeg


def _pixels(decoded: DecodedImage) -> Image.Image:
    assert isinstance(decoded.pixels, Image.Image)
    return decoded.pixels


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    return jpeg(Image.new("RGB", (width, height), (200, 30, 30)), orientation=orientation)


def test_a_large_jpeg_decodes_no_smaller_than_the_models_edge() -> None:
    decoded = PillowImageDecoder(min_edge=384).decode(io.BytesIO(_jpeg(4032, 3024)))
    assert _pixels(decoded).size == (1008, 756)
    assert _pixels(decoded).mode == "RGB"


def test_a_reduced_jpeg_is_still_turned_upright_per_exif() -> None:
    decoded = PillowImageDecoder(min_edge=384).decode(io.BytesIO(_jpeg(4032, 3024, 6)))
    assert _pixels(decoded).size == (756, 1008)


def test_a_reduced_image_reports_the_upright_size_of_the_file() -> None:
    # The record's width and height are what people see, not what the model was given.
    turned = PillowImageDecoder(min_edge=384).decode(io.BytesIO(_jpeg(4032, 3024, 6)))
    assert (turned.width, turned.height) == (3024, 4032)
    flipped = PillowImageDecoder(min_edge=384).decode(io.BytesIO(_jpeg(4032, 3024, 3)))
    assert (flipped.width, flipped.height) == (4032, 3024)
    out = io.BytesIO()
    Image.new("RGB", (2000, 1000), (0, 0, 255)).save(out, "PNG")
    png = PillowImageDecoder(min_edge=240).decode(io.BytesIO(out.getvalue()))
    assert (png.width, png.height) == (2000, 1000)


def test_the_models_edge_is_asked_for_at_each_decode() -> None:
    # A model says how big it wants its images once it has loaded: until then, every pixel.
    edges: list[int | None] = [None, 384]
    decoder = PillowImageDecoder(min_edge=lambda: edges[0])
    assert _pixels(decoder.decode(io.BytesIO(_jpeg(1600, 1200)))).size == (1600, 1200)
    edges[0] = edges[1]
    assert _pixels(decoder.decode(io.BytesIO(_jpeg(1600, 1200)))).size == (800, 600)


def test_a_large_png_is_reduced_after_being_turned() -> None:
    out = io.BytesIO()
    Image.new("RGB", (2000, 1000), (0, 0, 255)).save(out, "PNG")
    decoded = PillowImageDecoder(min_edge=240).decode(io.BytesIO(out.getvalue()))
    assert _pixels(decoded).size == (500, 250)


def test_without_a_model_edge_every_pixel_is_decoded() -> None:
    decoded = PillowImageDecoder().decode(io.BytesIO(_jpeg(1600, 1200)))
    assert _pixels(decoded).size == (1600, 1200)


def test_a_truncated_jpeg_is_refused_even_when_drafted() -> None:
    data = _jpeg(4032, 3024)
    with pytest.raises(InvalidImage):
        PillowImageDecoder(min_edge=384).decode(io.BytesIO(data[: len(data) // 2]))
