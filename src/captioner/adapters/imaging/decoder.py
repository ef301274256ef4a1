"""Image decoder on Pillow: type from the bytes, bombs refused, RGB handed to the model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from captioner.adapters.imaging import heif
from captioner.adapters.imaging.modes import to_8bit_colour
from captioner.adapters.imaging.quiet import quiet_pillow
from captioner.adapters.imaging.reduce import load_upright
from captioner.domain.errors import ImageTooLarge, InvalidImage, UnsupportedImageType
from captioner.domain.layout import ACCEPTED_NAMES, IMAGE_TYPES
from captioner.domain.model import DecodedImage

log = logging.getLogger(__name__)

# Pillow opens some allowed files under another name: a JPEG with a multi-picture extension
# (most phone and camera photos) is "MPO", yet it is a JPEG to every viewer.
_SAME_AS: dict[str, str] = {"MPO": "JPEG"}
# pillow-heif opens HEIC and other HEIF alike as "HEIF"; the brand tells them apart.
_PILLOW_NAME: dict[str, str] = {"HEIC": "HEIF"}
_PILLOW_FORMATS = list(dict.fromkeys(_PILLOW_NAME.get(name, name) for name in IMAGE_TYPES))

# Signatures of allowed types: bytes that start like one but do not open are a damaged image.
# (BMP's "BM" is too short to tell a damaged bitmap from text that happens to start so.)
_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

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


class PillowImageDecoder:
    """Implements the ImageDecoder port."""

    def __init__(
        self,
        max_pixels: int = 64_000_000,
        min_edge: int | Callable[[], int | None] | None = None,
    ) -> None:
        # min_edge: the short edge the model needs (with margin), or where to ask for it (a
        # model says once it has loaded); None decodes every pixel.
        self._max_pixels = max_pixels
        heif.register_heif_opener()
        self._min_edge: Callable[[], int | None] = (
            min_edge if callable(min_edge) else lambda: min_edge
        )

    def decode(self, content: BinaryIO) -> DecodedImage:
        # Pillow's warnings and its own pixel limit are set for this call only (pillow_scope).
        with quiet_pillow(self._max_pixels):
            return self._decode(content)

    def _decode(self, content: BinaryIO) -> DecodedImage:
        head = content.read(512)
        content.seek(0)  # the header peek above is this adapter's own read
        header = self._read_heif_header(content, head)
        image = self._open(content, head, header)
        fmt = _SAME_AS.get(image.format or "", image.format or "")
        if header is not None and fmt in ("HEIF", "AVIF"):
            fmt = header.format
        if fmt not in IMAGE_TYPES:
            raise _unsupported(head)
        image_type = IMAGE_TYPES[fmt]
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImage("The image has no pixels.")
        if width * height > self._max_pixels:
            raise ImageTooLarge(self._too_many_pixels_message(width, height))
        try:
            pixels, (width, height) = _to_rgb(image, self._min_edge())
        except Image.DecompressionBombError:
            raise ImageTooLarge(self._too_many_pixels_message(width, height)) from None
        except Exception as error:
            if heif.is_size_refusal(error):
                raise ImageTooLarge(self._too_many_pixels_message(width, height)) from None
            # Any failure of Pillow on these bytes means they are not a readable image.
            log.debug("decoding a %s upload failed", fmt, exc_info=True)
            problem = (
                f"The {fmt} image is damaged or truncated and could not be decoded "
                f"({_reason(error)})."
            )
            raise InvalidImage(
                f"{problem} Check the file opens in an image viewer.",
                problem=problem,
                accepted=ACCEPTED_NAMES,
            ) from None
        # Not image.close(): that would close the caller's stream, which is still needed.
        return DecodedImage(
            fmt, image_type.content_type, image_type.extension, width, height, pixels
        )

    def _read_heif_header(self, content: BinaryIO, head: bytes) -> heif.HeifHeader | None:
        """HEIC/HEIF/AVIF sizes from their boxes, checked before libheif or libavif run."""
        try:
            header = heif.read_header(content, head)
        except heif.DamagedHeif as error:
            raise _damaged_header(head, error) from None
        if header is not None and header.largest_pixels > self._max_pixels:
            raise ImageTooLarge(self._too_many_pixels_message(header.width, header.height))
        return header

    def _open(self, content: BinaryIO, head: bytes, header: heif.HeifHeader | None) -> Image.Image:
        """Read the header only: format and size, no pixels yet."""
        # The brand says which opener a HEIF-family file is for; others try them all.
        formats = [_PILLOW_NAME.get(header.format, header.format)] if header else _PILLOW_FORMATS
        try:
            # MPO is not named here: Pillow's JPEG opener hands those files over by itself.
            return Image.open(content, formats=formats)
        except UnidentifiedImageError as error:
            if _looks_like(head) is None:
                raise _unsupported(head) from None
            raise _damaged_header(head, error) from None
        except Image.DecompressionBombError:
            raise ImageTooLarge(self._too_many_pixels_message()) from None
        except Exception as error:
            if heif.is_size_refusal(error):
                raise ImageTooLarge(self._too_many_pixels_message()) from None
            # Pillow's parsers raise many kinds of errors on hostile headers; all mean "damaged".
            log.debug("reading an upload's header failed", exc_info=True)
            raise _damaged_header(head, error) from None

    def _too_many_pixels_message(self, width: int = 0, height: int = 0) -> str:
        size = f" ({width}x{height})" if width else ""
        return (
            f"The image has too many pixels{size}; the limit is {self._max_pixels:,} pixels. "
            "Resize it and upload again."
        )


def _to_rgb(image: Image.Image, min_edge: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The first frame upright (``load_upright``) as 8-bit RGB, what captioners expect; with
    the upright size of every pixel."""
    upright, size = load_upright(image, min_edge)
    pixels = to_8bit_colour(upright, keep_alpha=False)
    # Detached from the upload's stream, which the caller still owns.
    return (pixels.copy() if pixels is image else pixels), size


def _looks_like(head: bytes) -> str | None:
    for signature, name in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return heif.brand_format(head)


def _damaged_header(head: bytes, error: Exception) -> InvalidImage:
    kind = _looks_like(head)
    article = "an" if kind and kind[0] in "AEIOU" else "a"
    start = f"This file starts like {article} {kind} image but" if kind else "This file"
    reason = "" if isinstance(error, UnidentifiedImageError) else f" ({_reason(error)})"
    problem = f"{start} is damaged or truncated{reason}."
    return InvalidImage(
        f"{problem} Check the file opens in an image viewer and upload it again.",
        problem=problem,
        accepted=ACCEPTED_NAMES,
    )


def _unsupported(head: bytes) -> UnsupportedImageType:
    problem, remedy = _describe_unknown(head)
    return UnsupportedImageType(f"{problem} {remedy}", problem=problem, accepted=ACCEPTED_NAMES)


def _describe_unknown(head: bytes) -> tuple[str, str]:
    """What the bytes are, and what an uploader should do instead."""
    lowered = head.lstrip().lower()
    for signature, name in _KNOWN_OTHER_TYPES:
        if lowered.startswith(signature.lower()):
            return f"This file is {name}, not an image.", f"Upload a {ACCEPTED_NAMES} image."
    if heif.is_video(head):
        return (
            "This file is a video, not an image.",
            f"Upload a {ACCEPTED_NAMES} image (a still frame of the video, say).",
        )
    return "This file is not a supported image.", f"Upload a {ACCEPTED_NAMES} image."


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text[:200] if text else type(error).__name__
