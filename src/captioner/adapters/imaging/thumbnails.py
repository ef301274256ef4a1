"""Thumbnail rendering on Pillow: a small upright WebP of an image's first frame."""

from __future__ import annotations

import io
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.adapters.imaging.heif import register_heif_opener
from captioner.adapters.imaging.modes import to_8bit_colour
from captioner.adapters.imaging.quiet import quiet_pillow
from captioner.domain.errors import InvalidImage

DEFAULT_SIZE = 320
_QUALITY = 80
# Stored images passed the decoder's pixel limit on upload; this one only keeps Pillow's own
# (lower) limit from refusing them.
DEFAULT_MAX_PIXELS = 64_000_000


def render_thumbnail(
    original: BinaryIO, size: int = DEFAULT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """WebP bytes of the first frame, upright per EXIF, fitting in ``size`` x ``size``.

    ``original`` arrives at position 0.
    """
    register_heif_opener()  # HEIC is stored as uploaded; browsers other than Safari cannot show it
    try:
        with quiet_pillow(max_pixels), Image.open(original) as image:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster for big photos.
            image.draft("RGB", (size * 2, size * 2))
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            # WebP keeps transparency, so a thumbnail keeps it too.
            preview = to_8bit_colour(upright, keep_alpha=True)
            preview.thumbnail((size, size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            preview.save(buffer, "WEBP", quality=_QUALITY, method=4)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidImage(f"No thumbnail could be made of this image ({error}).") from None
    return buffer.getvalue()
