"""Thumbnail store on Pillow and local disk: one small WebP per distinct image, made once."""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.adapters.durable_files import write_atomically
from captioner.domain.errors import InvalidImage
from captioner.domain.model import ImageDigest, Thumbnail

THUMBNAILS = "thumbnails"
CONTENT_TYPE = "image/webp"
DEFAULT_SIZE = 320
_QUALITY = 80


class PillowThumbnailStore:
    """Implements the ThumbnailStore port: ``<data-dir>/thumbnails/ab/cd/<sha256>.webp``.

    The name is the digest of the original's bytes, so a thumbnail never goes stale and
    every record of the same image shares it. Files are written atomically (temp + rename):
    a reader sees a whole thumbnail or none.
    """

    def __init__(self, data_dir: Path, size: int = DEFAULT_SIZE) -> None:
        if size < 16:
            raise ValueError(f"thumbnail size {size} is too small")
        self._root = Path(data_dir).resolve() / THUMBNAILS
        self._size = size
        # Two first requests for the same image would both decode it; one at a time is
        # cheaper than that on a small machine, and a kept thumbnail never takes the lock.
        self._making = threading.Lock()

    def path_of(self, digest: ImageDigest) -> Path:
        return self._root / digest.hex[:2] / digest.hex[2:4] / f"{digest.hex}.webp"

    def open(self, digest: ImageDigest) -> Thumbnail | None:
        try:
            return Thumbnail(self.path_of(digest).open("rb"), CONTENT_TYPE)
        except FileNotFoundError:
            return None

    def make(self, digest: ImageDigest, original: BinaryIO) -> Thumbnail:
        with self._making:
            kept = self.open(digest)
            if kept is not None:
                return kept
            data = render_thumbnail(original, self._size)
            write_atomically(self.path_of(digest), data)
        return Thumbnail(io.BytesIO(data), CONTENT_TYPE)

    def delete(self, digest: ImageDigest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(digest).unlink()


def render_thumbnail(original: BinaryIO, size: int = DEFAULT_SIZE) -> bytes:
    """WebP bytes of the first frame, upright per EXIF, fitting in ``size`` x ``size``."""
    original.seek(0)
    try:
        with warnings.catch_warnings():
            # Stored images passed the decoder's pixel limit on upload; Pillow's own warning
            # about big images is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(original) as image:
                # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster for big photos.
                image.draft("RGB", (size * 2, size * 2))
                image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image) or image
                preview = _displayable(upright)
                preview.thumbnail((size, size), Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                preview.save(buffer, "WEBP", quality=_QUALITY, method=4)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidImage(f"No thumbnail could be made of this image ({error}).") from None
    return buffer.getvalue()


def _displayable(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency (WebP keeps it)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    wanted = "RGBA" if has_alpha else "RGB"
    return image if image.mode == wanted else image.convert(wanted)
