"""Thumbnail rendering on Pillow: a small upright WebP of an image's first frame."""

from __future__ import annotations

import io
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from captioner.adapters.imaging import heif
from captioner.adapters.imaging.modes import to_8bit_colour
from captioner.adapters.imaging.quiet import quiet_pillow
from captioner.adapters.imaging.reduce import edge_within, load_upright
from captioner.domain.errors import InvalidImage

DEFAULT_SIZE = 320
_QUALITY = 80
# Decoded at twice the thumbnail's size at least, then Lanczos: Pillow's own reducing gap for
# thumbnail(), so the reduced decode looks as a full one shrunk would.
_REDUCING_GAP = 2
# Stored images passed the decoder's pixel limit on upload; this one keeps a file put into the
# store some other way (a restore, a copy) from costing more than an upload may.
DEFAULT_MAX_PIXELS = 64_000_000


def render_thumbnail(
    original: BinaryIO, size: int = DEFAULT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """WebP bytes of the first frame, upright per EXIF, fitting in ``size`` x ``size``.

    ``original`` arrives at position 0. The picture is decoded only as large as the thumbnail
    needs (JPEG draft mode, an integer reduce for other formats), yet every byte is read.
    """
    heif.register_heif_opener()  # HEIC is stored as uploaded; only Safari shows it
    try:
        with quiet_pillow(max_pixels):
            _check_heif_header(original, max_pixels)
            with Image.open(original) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_large(width, height, max_pixels)
                edge = edge_within(width, height, size * _REDUCING_GAP)
                upright, _ = load_upright(image, edge)
                # WebP keeps transparency, so a thumbnail keeps it too.
                preview = to_8bit_colour(upright, keep_alpha=True)
                preview.thumbnail((size, size), Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                preview.save(buffer, "WEBP", quality=_QUALITY, method=4)
    except (
        Image.DecompressionBombError,
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
    ) as error:
        raise InvalidImage(f"No thumbnail could be made of this image ({error}).") from None
    return buffer.getvalue()


def _check_heif_header(original: BinaryIO, max_pixels: int) -> None:
    """HEIC/AVIF sizes and completeness from their boxes, before libheif decodes a pixel."""
    head = original.read(512)
    original.seek(0)
    header = heif.read_header(original, head)  # DamagedHeif is a ValueError: damaged
    if header is not None and header.largest_pixels > max_pixels:
        raise _too_large(header.width, header.height, max_pixels)


def _too_large(width: int, height: int, max_pixels: int) -> InvalidImage:
    return InvalidImage(
        f"No thumbnail could be made of this image: it has too many pixels ({width}x{height}); "
        f"the limit is {max_pixels:,}."
    )
