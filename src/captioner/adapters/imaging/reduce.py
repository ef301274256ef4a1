"""Decode at the size needed: JPEG draft mode, integer reduce for other formats.

A helper module, not an adapter (like ``modes``): the decoder (the model's size) and the
thumbnail renderer (the thumbnail's) share it.
"""

from __future__ import annotations

from PIL import ExifTags, Image, ImageOps

# EXIF orientations that flip or turn the picture; of them, those that turn it a quarter
# (transpose, 270, transverse, 90) and so swap its width and height.
_TURNING_ORIENTATIONS = frozenset(range(2, 9))
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def load_upright(image: Image.Image, min_edge: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """The first frame fully decoded, upright per EXIF, reduced while its short edge stays at
    least ``min_edge`` (None: every pixel); with the upright size of the file's own pixels,
    which is what people see (EXIF may turn a 4000x3000 header into 3000x4000).

    Every byte of the file is still decoded, so truncated or damaged files fail here.
    """
    image.seek(0)
    header_size = image.size
    reduce_while_loading(image, min_edge)
    image.load()
    # exif_transpose reads only the EXIF tag; called only when it turns, since otherwise it
    # copies every pixel for nothing.
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    upright = ImageOps.exif_transpose(image) if orientation in _TURNING_ORIENTATIONS else image
    size = upright.size
    if image.size != header_size:  # drafted: the file's own size, turned as the picture was
        size = header_size[::-1] if orientation in _SWAPPING_ORIENTATIONS else header_size
    # A drafted JPEG is already small when turned; other formats shrink after turning, since
    # reduce() drops the EXIF (or TIFF tag) orientation the turn reads.
    return reduce_loaded(upright, min_edge), size


def edge_within(width: int, height: int, box: int) -> int:
    """The short edge at which the long edge of a ``width`` x ``height`` picture is ``box``:
    the ``min_edge`` that keeps a reduced picture at least ``box`` x ``box`` to fit in."""
    return -(-box * min(width, height) // max(width, height, 1))


def reduce_while_loading(image: Image.Image, min_edge: int | None) -> None:
    """Have the decoder skip pixels resized away later; the short edge stays >= min_edge.

    JPEG decodes straight to 1/2, 1/4 or 1/8 scale (draft); other formats are loaded whole and
    shrunk by an integer factor afterwards (see reduce_loaded).
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
