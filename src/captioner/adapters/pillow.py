"""Image decoder on Pillow: type from the bytes, bombs refused, RGB handed to the model."""

from __future__ import annotations

import warnings
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.domain.errors import ImageTooLarge, InvalidImage, UnsupportedImageType
from captioner.domain.model import DecodedImage

# Pillow format name -> (content type, file extension). Nothing else is accepted.
ALLOWED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tiff"),
}

# Signatures of common non-image uploads, to say what the file is instead of "unreadable".
_KNOWN_OTHER_TYPES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x7fELF", "an executable program"),
    (b"MZ", "a Windows executable"),
    (b"<?php", "a PHP script"),
    (b"<?xml", "an XML document"),
    (b"<svg", "an SVG drawing"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"\x1f\x8b", "a gzip archive"),
)
_ALLOWED_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class PillowImageDecoder:
    """Implements the ImageDecoder port."""

    def __init__(self, max_pixels: int = 64_000_000) -> None:
        self._max_pixels = max_pixels

    def decode(self, content: BinaryIO) -> DecodedImage:
        content.seek(0)
        head = content.read(512)
        content.seek(0)
        try:
            # Pillow's own bomb guard only warns below 2x its limit; ours is checked below
            # from the header, so silence its warning rather than rely on it.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(content, formats=list(ALLOWED_FORMATS))
        except UnidentifiedImageError:
            raise UnsupportedImageType(_describe_unknown(head)) from None
        except Image.DecompressionBombError:
            raise ImageTooLarge(self._too_many_pixels_message()) from None
        except (OSError, ValueError, SyntaxError) as error:
            raise InvalidImage(
                f"The image could not be read ({error}); it may be damaged."
            ) from None
        fmt = image.format or ""
        content_type, extension = ALLOWED_FORMATS[fmt]
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImage("The image has no pixels.")
        if width * height > self._max_pixels:
            raise ImageTooLarge(self._too_many_pixels_message(width, height))
        try:
            pixels = _to_rgb(image)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise InvalidImage(
                f"The {fmt} image is damaged or truncated and could not be decoded ({error})."
            ) from None
        # Not image.close(): that would close the caller's stream, which is still needed.
        content.seek(0)
        return DecodedImage(fmt, content_type, extension, width, height, pixels)

    def _too_many_pixels_message(self, width: int = 0, height: int = 0) -> str:
        size = f" ({width}x{height})" if width else ""
        return (
            f"The image has too many pixels{size}; the limit is {self._max_pixels:,} pixels. "
            "Resize it and upload again."
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Fully decode the first frame, upright per EXIF, as 8-bit RGB (what captioners expect)."""
    image.seek(0)
    image.load()
    upright = ImageOps.exif_transpose(image) or image
    if upright.mode == "RGB":
        return upright.copy() if upright is image else upright
    if upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    ):
        # Flatten transparency onto white: black behind a transparent logo misleads the model.
        rgba = upright.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
        return upright.point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    return upright.convert("RGB")


def _describe_unknown(head: bytes) -> str:
    lowered = head.lstrip().lower()
    for signature, name in _KNOWN_OTHER_TYPES:
        if lowered.startswith(signature.lower()):
            return f"This file is {name}, not an image. Upload a {_ALLOWED_NAMES} image."
    if head.startswith(b"\x00\x00\x00") and b"ftyp" in head[:16]:
        return (
            "HEIC/AVIF and video files are not supported. "
            f"Convert it to {_ALLOWED_NAMES} and upload again."
        )
    return f"This file is not a supported image. Upload a {_ALLOWED_NAMES} image."
