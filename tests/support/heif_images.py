"""HEIC and AVIF files made by the tests themselves, with pillow-heif's and Pillow's encoders
(and JPEG, the same picture as a camera writes it, to compare with)."""

from __future__ import annotations

import io
from typing import Any

import pillow_heif
from PIL import Image

ORIENTATION = 0x0112
# x265's fastest preset: a 48 MP solid-colour HEIC encodes in seconds rather than ~9 s.
_FAST = {"preset": "ultrafast"}
# Big coding blocks only: a third less time again on a large plain image (8 s vs 12 s, 48 MP).
BIG_BLOCKS = {**_FAST, "x265:ctu": "64", "x265:min-cu-size": "32"}


def heic(
    image: Image.Image,
    *,
    orientation: int | None = None,
    enc_params: dict[str, str] | None = None,
    **options: Any,
) -> bytes:
    """``image`` as HEIC; ``orientation`` is written as the EXIF tag (pillow-heif turns it
    into the irot/imir boxes phones write)."""
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    params = enc_params or _FAST
    pillow_heif.from_pillow(image).save(buffer, format="HEIF", enc_params=params, **options)
    return buffer.getvalue()


def jpeg(image: Image.Image, *, orientation: int | None = None) -> bytes:
    """``image`` as JPEG at quality 90; ``orientation`` is written as the EXIF tag."""
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def heic_burst(*images: Image.Image) -> bytes:
    """Several images in one HEIC file, the first the primary one (a burst, a live photo)."""
    heif_file = pillow_heif.from_pillow(images[0])
    for image in images[1:]:
        heif_file.add_from_pillow(image)
    buffer = io.BytesIO()
    heif_file.save(buffer, format="HEIF", enc_params=_FAST)
    return buffer.getvalue()


def heic_10bit(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """A 10-bit HEIC (what iPhones write for HDR) of one colour, given in 16-bit samples."""
    width, height = size
    pixel = b"".join(value.to_bytes(2, "little") for value in colour)
    heif_file = pillow_heif.from_bytes(mode="RGB;16", size=size, data=pixel * (width * height))
    buffer = io.BytesIO()
    heif_file.save(buffer, format="HEIF", enc_params=_FAST)
    return buffer.getvalue()


def avif(image: Image.Image, *, orientation: int | None = None, **options: Any) -> bytes:
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    image.save(buffer, "AVIF", **options)
    return buffer.getvalue()


def declaring_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with every ``ispe`` box (each item's declared size) saying ``width`` x ``height``:
    a bomb, a few hundred bytes that claim billions of pixels."""
    patched = bytearray(data)
    start = patched.find(b"ispe")
    assert start > 0, "no ispe box"
    while start > 0:
        # type, then version/flags (4 bytes), then width and height (4 bytes each)
        patched[start + 8 : start + 16] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        start = patched.find(b"ispe", start + 4)
    return bytes(patched)


def solid(size: tuple[int, int], colour: tuple[int, int, int] = (40, 120, 200)) -> Image.Image:
    return Image.new("RGB", size, colour)


def two_colour(size: tuple[int, int] = (64, 32)) -> Image.Image:
    """Left half red, right half blue: an image whose turn can be seen in its pixels."""
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (size[0] // 2, 0, size[0], size[1]))
    return image
