"""Decode at the size a model needs: JPEG draft mode, integer reduce for other formats."""

from __future__ import annotations

from PIL import Image


def reduce_while_loading(image: Image.Image, min_edge: int | None) -> None:
    """Have the decoder skip pixels the model resizes away; the short edge stays >= min_edge.

    JPEG decodes straight to 1/2, 1/4 or 1/8 scale (draft); other formats are loaded whole and
    shrunk by an integer factor afterwards (see reduce_loaded). Either way every byte of the
    file is still read, so truncated or damaged files still fail in load().
    """
    if min_edge is None or image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    scale = _integer_factor(width, height, min_edge)
    if scale > 1:
        image.draft("RGB", (-(-width // scale), -(-height // scale)))


def reduce_loaded(image: Image.Image, min_edge: int | None) -> Image.Image:
    """Shrink an already loaded image by an integer factor, short edge staying >= min_edge."""
    if min_edge is None:
        return image
    factor = _integer_factor(image.width, image.height, min_edge)
    return image.reduce(factor) if factor > 1 else image


def _integer_factor(width: int, height: int, min_edge: int) -> int:
    factor = 1
    while factor < 8 and min(width, height) // (factor * 2) >= min_edge:
        factor *= 2
    return factor
