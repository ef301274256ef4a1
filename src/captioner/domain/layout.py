"""The storage vocabulary every store shares: where an image's bytes are kept, under what
name its thumbnail is, and which image types are accepted."""

from __future__ import annotations

import re
from dataclasses import dataclass

from captioner.domain.model import ImageDigest

UPLOADS = "uploads"
THUMBNAILS = "thumbnails"
_EXTENSION = re.compile(r"^[a-z0-9]{1,5}$")
_FANNED_OUT = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})(.*)$")


def fanned_out(digest: ImageDigest) -> str:
    """``ab/cd/<sha256>``: two folder levels by the digest's first bytes keep folders small."""
    return f"{digest.hex[:2]}/{digest.hex[2:4]}/{digest.hex}"


def _parse_fanned_out(tail: str) -> tuple[ImageDigest, str] | None:
    """The digest and what follows it in ``ab/cd/<sha256><rest>``; None for any other name."""
    match = _FANNED_OUT.match(tail)
    if match is None or match[3][:2] != match[1] or match[3][2:4] != match[2]:
        return None
    return ImageDigest(match[3]), match[4]


@dataclass(frozen=True)
class StoredPath:
    """Where an image's bytes are kept: ``uploads/ab/cd/<sha256>.<ext>``, in every store.

    Built from the digest and the decoded format only, so nothing a client sends chooses
    where a file lands; the same path on disk and in a bucket, so a data dir moves by copying.
    """

    digest: ImageDigest
    extension: str

    def __post_init__(self) -> None:
        if not _EXTENSION.match(self.extension):
            raise ValueError(f"bad extension {self.extension!r}")

    @property
    def tail(self) -> str:
        """The part below ``uploads/``: ``ab/cd/<sha256>.<ext>`` (an object key's end)."""
        return f"{fanned_out(self.digest)}.{self.extension}"

    def __str__(self) -> str:
        return f"{UPLOADS}/{self.tail}"

    @classmethod
    def parse(cls, path: str) -> StoredPath:
        """The stored path ``path`` names; ValueError for anything else (a temp file, say)."""
        head, _, tail = path.partition("/")
        if head != UPLOADS:
            raise ValueError(f"not a stored image path: {path!r}")
        return cls.from_tail(tail)

    @classmethod
    def from_tail(cls, tail: str) -> StoredPath:
        """The stored path whose part below ``uploads/`` is ``tail``; ValueError otherwise."""
        parsed = _parse_fanned_out(tail)
        if parsed is not None:
            digest, rest = parsed
            if rest.startswith(".") and _EXTENSION.match(rest[1:]):
                return cls(digest, rest[1:])
        raise ValueError(f"not a stored image path: {UPLOADS}/{tail!r}")


def thumbnail_name(digest: ImageDigest, suffix: str) -> str:
    """``ab/cd/<sha256><suffix>``: a thumbnail is named by the digest of the image it shows."""
    return f"{fanned_out(digest)}{suffix}"


def thumbnail_digest(name: str, suffix: str) -> ImageDigest | None:
    """The digest ``name`` (from thumbnail_name) shows; None when it is no thumbnail's name."""
    parsed = _parse_fanned_out(name)
    return parsed[0] if parsed is not None and parsed[1] == suffix else None


@dataclass(frozen=True)
class ImageType:
    """An accepted image type: how the decoder names it, how it is served and stored."""

    format: str  # Pillow's name for it, read from the bytes
    content_type: str
    extension: str  # of the stored file
    suffixes: tuple[str, ...]  # file names a folder scan picks up
    name: str  # for people


# Nothing else is accepted: the decoder, the stores, the CLI and the API docs all read this.
IMAGE_TYPES: dict[str, ImageType] = {
    image_type.format: image_type
    for image_type in (
        ImageType("JPEG", "image/jpeg", "jpg", (".jpg", ".jpeg"), "JPEG"),
        ImageType("PNG", "image/png", "png", (".png",), "PNG"),
        ImageType("WEBP", "image/webp", "webp", (".webp",), "WebP"),
        ImageType("GIF", "image/gif", "gif", (".gif",), "GIF"),
        ImageType("BMP", "image/bmp", "bmp", (".bmp",), "BMP"),
        ImageType("TIFF", "image/tiff", "tiff", (".tif", ".tiff"), "TIFF"),
        # HEIC is HEVC-coded HEIF (phones); "HEIF" is any other codec in the same container.
        ImageType("HEIC", "image/heic", "heic", (".heic",), "HEIC"),
        ImageType("HEIF", "image/heif", "heif", (".heif", ".hif"), "HEIF"),
        ImageType("AVIF", "image/avif", "avif", (".avif",), "AVIF"),
    )
}
IMAGE_SUFFIXES = frozenset(suffix for t in IMAGE_TYPES.values() for suffix in t.suffixes)
_NAMES = [image_type.name for image_type in IMAGE_TYPES.values()]
ACCEPTED_NAMES = f"{', '.join(_NAMES[:-1])} or {_NAMES[-1]}"  # "JPEG, PNG, ... or TIFF"
_CONTENT_TYPE_BY_SUFFIX = {
    suffix: image_type.content_type
    for image_type in IMAGE_TYPES.values()
    for suffix in image_type.suffixes
}


def content_type_of(extension: str) -> str:
    """The media type of a stored file's extension (``jpg``, ``tiff``...)."""
    return _CONTENT_TYPE_BY_SUFFIX.get(f".{extension}", "application/octet-stream")
