"""The one mode conversion shared by the decoder and the thumbnail store."""

from __future__ import annotations

import pytest
from PIL import Image

from captioner.adapters.imaging.modes import to_8bit_colour


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I"])
@pytest.mark.parametrize("keep_alpha", [True, False])
def test_integer_grey_keeps_its_top_8_bits(mode: str, keep_alpha: bool) -> None:
    grey = Image.new(mode, (4, 4), 0x8000)

    colour = to_8bit_colour(grey, keep_alpha=keep_alpha)

    assert colour.mode == "RGB"
    assert colour.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("keep_alpha", [True, False])
def test_float_grey_is_stretched_to_the_full_8_bit_range(keep_alpha: bool) -> None:
    ramp = Image.linear_gradient("L").point(lambda value: value / 255, "F")

    colour = to_8bit_colour(ramp, keep_alpha=keep_alpha)

    assert colour.mode == "RGB"
    assert colour.convert("L").getextrema() == (0, 255)


def test_flat_float_image_is_black_not_a_division_error() -> None:
    colour = to_8bit_colour(Image.new("F", (4, 4), 0.5), keep_alpha=False)

    assert colour.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P"])
def test_transparency_is_kept_when_asked(mode: str) -> None:
    see_through = Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert(mode)
    if mode == "P":
        see_through.info["transparency"] = 0

    colour = to_8bit_colour(see_through, keep_alpha=True)

    assert colour.mode == "RGBA"
    assert colour.getpixel((0, 0))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P"])
def test_transparency_is_flattened_onto_white_otherwise(mode: str) -> None:
    see_through = Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert(mode)
    if mode == "P":
        see_through.info["transparency"] = 0

    colour = to_8bit_colour(see_through, keep_alpha=False)

    assert colour.mode == "RGB"
    assert colour.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "YCbCr", "1"])
@pytest.mark.parametrize("keep_alpha", [True, False])
def test_opaque_images_become_rgb(mode: str, keep_alpha: bool) -> None:
    colour = to_8bit_colour(
        Image.new("RGB", (4, 4), (200, 0, 0)).convert(mode), keep_alpha=keep_alpha
    )

    assert colour.mode == "RGB"
