"""The ImageStore and ThumbnailStore contracts, held by the disk stores and the S3 stores alike."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from captioner.adapters.imaging.thumbnails import render_thumbnail
from captioner.adapters.storage.disk import FilesystemImageStore
from captioner.adapters.storage.disk_thumbnails import DiskThumbnailStore
from captioner.adapters.storage.s3 import S3ImageStore, S3ThumbnailStore, make_s3_client
from captioner.domain.model import ImageDigest
from captioner.domain.ports import ImageStore, ThumbnailStore
from tests.conftest import png_bytes
from tests.support.s3 import S3Bucket

# Smallest part S3 takes (every part but the last): big uploads are tested in a few parts.
PART = 5 * 1024 * 1024

StoreMaker = Callable[[], ImageStore]


@pytest.fixture(params=["filesystem", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    if request.param == "filesystem":
        return lambda: FilesystemImageStore(tmp_path / "data")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return lambda: S3ImageStore(
        make_s3_client(), bucket.store_url, multipart_threshold=PART, part_bytes=PART
    )


@pytest.fixture
def store(make_store: StoreMaker) -> ImageStore:
    return make_store()


@pytest.fixture(params=["filesystem", "s3"])
def thumbnails(request: pytest.FixtureRequest, tmp_path: Path) -> ThumbnailStore:
    if request.param == "filesystem":
        return DiskThumbnailStore(tmp_path / "data", render_thumbnail)
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return S3ThumbnailStore(make_s3_client(), bucket.store_url, render_thumbnail)


def test_saved_bytes_come_back_under_a_content_addressed_path(store: ImageStore) -> None:
    data = b"image bytes"
    digest = ImageDigest.of_bytes(data)

    path = store.save(digest, io.BytesIO(data), "png")

    assert path == f"uploads/{digest.hex[:2]}/{digest.hex[2:4]}/{digest.hex}.png"
    with store.open(path) as stream:
        assert stream.read() == data
    assert store.exists(path)
    assert store.digest_of(path) == digest
    assert list(store.paths()) == [path]
    assert 0.0 <= store.age_s(path) < 60.0


def test_saving_the_same_bytes_twice_keeps_one_copy(store: ImageStore) -> None:
    data = b"same bytes"
    digest = ImageDigest.of_bytes(data)

    first = store.save(digest, io.BytesIO(data), "jpg")
    second = store.save(digest, io.BytesIO(data), "jpg")

    assert first == second
    assert list(store.paths()) == [first]


def test_a_big_upload_is_stored_whole(store: ImageStore) -> None:
    data = os.urandom(2 * PART + 12345)  # three parts on S3
    digest = ImageDigest.of_bytes(data)

    path = store.save(digest, io.BytesIO(data), "jpg")

    assert store.digest_of(path) == digest
    with store.open(path) as stream:
        stream.seek(PART + 7)
        assert stream.read(100) == data[PART + 7 : PART + 107]


def test_a_stored_file_is_seekable_and_knows_its_size(store: ImageStore) -> None:
    data = png_bytes()
    path = store.save(ImageDigest.of_bytes(data), io.BytesIO(data), "png")

    with store.open(path) as stream:
        assert stream.seek(0, os.SEEK_END) == len(data)
        stream.seek(0)
        assert stream.read(8) == data[:8]
        stream.seek(1)
        assert stream.read() == data[1:]


def test_deleted_files_are_gone_and_deleting_twice_is_fine(store: ImageStore) -> None:
    data = b"to delete"
    path = store.save(ImageDigest.of_bytes(data), io.BytesIO(data), "png")

    store.delete(path)
    store.delete(path)

    assert not store.exists(path)
    assert list(store.paths()) == []
    with pytest.raises(FileNotFoundError):
        store.open(path)
    with pytest.raises(FileNotFoundError):
        store.age_s(path)


@pytest.mark.parametrize(
    "path", ["../secret", "uploads/../../etc/passwd", "uploads/ab/cd/nothex.png", "", "/etc"]
)
def test_paths_that_name_no_stored_image_are_missing(store: ImageStore, path: str) -> None:
    assert not store.exists(path)
    with pytest.raises((FileNotFoundError, ValueError)):
        store.open(path)


def test_a_new_store_is_ready(store: ImageStore) -> None:
    assert store.readiness().ready


def test_listing_shows_every_image_and_no_thumbnail(
    make_store: StoreMaker, thumbnails: ThumbnailStore
) -> None:
    store = make_store()
    saved = set()
    for index in range(5):
        data = png_bytes((index * 40, 0, 0))
        digest = ImageDigest.of_bytes(data)
        saved.add(store.save(digest, io.BytesIO(data), "png"))
        thumbnails.open_or_make(digest, functools.partial(io.BytesIO, data))

    assert set(store.paths()) == saved


def test_a_thumbnail_is_made_once_kept_listed_and_deleted(thumbnails: ThumbnailStore) -> None:
    original = png_bytes(size=(800, 600))
    digest = ImageDigest.of_bytes(original)
    opened: list[int] = []

    def open_original() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(original)

    made = thumbnails.open_or_make(digest, open_original)
    made_bytes = made.content.read()
    kept = thumbnails.open_or_make(digest, open_original)

    assert made.content_type == "image/webp"
    assert made_bytes.startswith(b"RIFF")
    with kept.content:
        assert kept.content.read() == made_bytes
    assert len(opened) == 1  # the second time, the kept one: the original is not read
    assert list(thumbnails.digests()) == [digest]
    thumbnails.delete(digest)
    thumbnails.delete(digest)
    assert list(thumbnails.digests()) == []
    thumbnails.open_or_make(digest, open_original)
    assert len(opened) == 2
