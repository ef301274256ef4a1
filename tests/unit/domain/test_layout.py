"""The storage vocabulary: stored paths and thumbnail names round-trip, nothing else parses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captioner.domain.layout import (
    ACCEPTED_NAMES,
    IMAGE_SUFFIXES,
    IMAGE_TYPES,
    StoredPath,
    content_type_of,
    thumbnail_digest,
    thumbnail_name,
)
from captioner.domain.model import ImageDigest

digests = st.binary(max_size=64).map(ImageDigest.of_bytes)
extensions = st.sampled_from([t.extension for t in IMAGE_TYPES.values()])


@given(digests, extensions)
def test_a_stored_path_parses_back_to_its_digest_and_extension(
    digest: ImageDigest, extension: str
) -> None:
    path = StoredPath(digest, extension)

    assert str(path) == f"uploads/{digest.hex[:2]}/{digest.hex[2:4]}/{digest.hex}.{extension}"
    assert StoredPath.parse(str(path)) == path
    assert StoredPath.from_tail(path.tail) == path


@given(digests, st.sampled_from([".webp", ".thumbnail.webp"]))
def test_a_thumbnail_name_gives_back_the_digest_it_shows(digest: ImageDigest, suffix: str) -> None:
    name = thumbnail_name(digest, suffix)

    assert thumbnail_digest(name, suffix) == digest
    assert thumbnail_digest(name, ".png") is None


SHA = "ab" * 32


@pytest.mark.parametrize(
    "path",
    [
        f"uploads/00/00/{SHA}.png",  # folders that do not match the digest
        f"uploads/ab/ab/.incoming-x{SHA}",  # a temp file left by a crash
        f"uploads/ab/ab/{SHA}.thumbnail.webp",  # a thumbnail beside the images
        f"thumbnails/ab/ab/{SHA}.png",
        f"uploads/ab/ab/{SHA}",
        "../etc/passwd",
    ],
)
def test_only_stored_image_paths_parse(path: str) -> None:
    with pytest.raises(ValueError, match="not a stored image path"):
        StoredPath.parse(path)


def test_an_extension_a_client_could_choose_is_refused() -> None:
    with pytest.raises(ValueError, match="bad extension"):
        StoredPath(ImageDigest(SHA), "../x")


def test_image_types_name_every_suffix_and_content_type_once() -> None:
    assert {
        *(".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
        *(".heic", ".heif", ".hif", ".avif"),
    } == IMAGE_SUFFIXES
    assert ACCEPTED_NAMES == "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, HEIF or AVIF"
    assert content_type_of("heic") == "image/heic"
    assert content_type_of("heif") == "image/heif"
    assert content_type_of("avif") == "image/avif"
    assert content_type_of("jpeg") == content_type_of("jpg") == "image/jpeg"
    assert content_type_of("tif") == "image/tiff"
    assert content_type_of("exe") == "application/octet-stream"
