"""DiskThumbnailStore on a real directory: small WebP files, made once, named by the digest."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from PIL import Image

from captioner.adapters.imaging.thumbnails import render_thumbnail
from captioner.adapters.storage.disk_thumbnails import DiskThumbnailStore
from captioner.domain.errors import InvalidImage
from captioner.domain.model import ImageDigest, Thumbnail


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def read_all(thumbnail: Thumbnail | None) -> bytes:
    """The thumbnail's bytes; its stream is closed after."""
    assert thumbnail is not None
    with thumbnail.content as content:
        return content.read()


def is_kept(store: DiskThumbnailStore, digest: ImageDigest) -> bool:
    thumbnail = store.open(digest)
    if thumbnail is not None:
        thumbnail.content.close()
    return thumbnail is not None


def render(store: DiskThumbnailStore, digest: ImageDigest, original: BinaryIO) -> None:
    """``open_or_make`` as a thread's work: the answer is only closed."""
    store.open_or_make(digest, lambda: original).content.close()


def make(store: DiskThumbnailStore, data: bytes) -> Image.Image:
    thumbnail = store.open_or_make(ImageDigest.of_bytes(data), lambda: io.BytesIO(data))
    assert thumbnail.content_type == "image/webp"
    image = Image.open(io.BytesIO(read_all(thumbnail)))
    image.load()
    return image


@pytest.fixture
def store(data_dir: Path) -> DiskThumbnailStore:
    return DiskThumbnailStore(data_dir, render_thumbnail)


def test_big_photo_becomes_a_webp_of_at_most_320_pixels_keeping_its_shape(
    store: DiskThumbnailStore,
) -> None:
    photo = encoded(Image.new("RGB", (1600, 1200), (10, 120, 200)), "JPEG")

    thumbnail = make(store, photo)

    assert thumbnail.format == "WEBP"
    assert thumbnail.size == (320, 240)


def test_small_image_is_not_blown_up(store: DiskThumbnailStore) -> None:
    thumbnail = make(store, encoded(Image.new("RGB", (64, 48)), "PNG"))

    assert thumbnail.size == (64, 48)


def test_thumbnail_is_kept_under_the_data_dir_by_digest(
    store: DiskThumbnailStore, data_dir: Path
) -> None:
    data = encoded(Image.new("RGB", (100, 100), (200, 0, 0)), "PNG")
    digest = ImageDigest.of_bytes(data)

    make(store, data)

    expected = data_dir / "thumbnails" / digest.hex[:2] / digest.hex[2:4] / f"{digest.hex}.webp"
    assert expected.is_file()
    assert [p for p in data_dir.rglob("*") if p.is_file()] == [expected]
    assert read_all(store.open(digest)) == expected.read_bytes()


def test_a_kept_thumbnail_is_not_made_again(store: DiskThumbnailStore, data_dir: Path) -> None:
    data = encoded(Image.new("RGB", (100, 100), (0, 200, 0)), "PNG")
    digest = ImageDigest.of_bytes(data)
    make(store, data)
    path = store.path_of(digest)
    written = path.stat().st_mtime_ns

    again = store.open_or_make(digest, lambda: io.BytesIO(b"bytes that are no image at all"))

    assert read_all(again) == path.read_bytes()
    assert path.stat().st_mtime_ns == written


def test_kept_thumbnails_are_listed_by_digest_and_nothing_else(
    store: DiskThumbnailStore,
) -> None:
    data = encoded(Image.new("RGB", (30, 30)), "PNG")
    make(store, data)
    leftover = store.path_of(ImageDigest.of_bytes(data)).parent / ".incoming-crashed"
    leftover.write_bytes(b"half a thumbnail")

    assert list(store.digests()) == [ImageDigest.of_bytes(data)]


def test_no_thumbnails_yet_lists_none(store: DiskThumbnailStore) -> None:
    assert list(store.digests()) == []


def test_open_before_make_finds_nothing(store: DiskThumbnailStore) -> None:
    assert not is_kept(store, ImageDigest.of_bytes(b"never seen"))


def test_delete_removes_the_file_and_is_a_no_op_the_second_time(
    store: DiskThumbnailStore,
) -> None:
    data = encoded(Image.new("RGB", (30, 30)), "PNG")
    digest = ImageDigest.of_bytes(data)
    make(store, data)

    store.delete(digest)
    store.delete(digest)

    assert not is_kept(store, digest)
    assert not store.path_of(digest).exists()


def test_sideways_phone_photo_is_turned_upright(store: DiskThumbnailStore) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    photo = encoded(Image.new("RGB", (400, 200)), "JPEG", exif=exif.tobytes())

    thumbnail = make(store, photo)

    assert thumbnail.size == (160, 320)


def test_transparency_is_kept(store: DiskThumbnailStore) -> None:
    logo = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    logo.putpixel((25, 25), (255, 0, 0, 255))

    thumbnail = make(store, encoded(logo, "PNG"))

    assert thumbnail.mode == "RGBA"
    assert thumbnail.getpixel((0, 0))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("P", "GIF"), ("L", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("RGB", "BMP")],
)
def test_every_accepted_kind_of_image_gets_a_thumbnail(
    store: DiskThumbnailStore, mode: str, fmt: str
) -> None:
    thumbnail = make(store, encoded(Image.new(mode, (40, 30)), fmt))

    assert thumbnail.size == (40, 30)
    assert thumbnail.mode in ("RGB", "RGBA")


def test_bytes_that_are_not_an_image_are_an_invalid_image(store: DiskThumbnailStore) -> None:
    with pytest.raises(InvalidImage):
        store.open_or_make(ImageDigest.of_bytes(b"nope"), lambda: io.BytesIO(b"nope"))
    assert not is_kept(store, ImageDigest.of_bytes(b"nope"))


class StalledUpload(io.BytesIO):
    """An original whose first read stops until the test lets it go: a render caught midway."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def read(self, size: int | None = -1, /) -> bytes:
        self.reading.set()
        assert self.go_on.wait(timeout=10), "the test never let the stalled render go on"
        return super().read(size)


class CountedUpload(io.BytesIO):
    """An original that counts how often it is read."""

    reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        return super().read(size)


def test_two_different_images_get_their_thumbnails_at_the_same_time(
    store: DiskThumbnailStore,
) -> None:
    first = encoded(Image.new("RGB", (64, 64), (255, 0, 0)), "PNG")
    second = encoded(Image.new("RGB", (64, 64), (0, 0, 255)), "PNG")
    stalled = StalledUpload(first)
    stalled_render = threading.Thread(
        target=render,
        args=(store, ImageDigest.of_bytes(first), stalled),
        daemon=True,
    )
    other_render = threading.Thread(target=make, args=(store, second), daemon=True)
    try:
        stalled_render.start()
        assert stalled.reading.wait(timeout=10)

        other_render.start()
        other_render.join(timeout=10)

        assert not other_render.is_alive(), "the second image waited for the first one"
        assert is_kept(store, ImageDigest.of_bytes(second))
        assert not is_kept(store, ImageDigest.of_bytes(first))
    finally:
        stalled.go_on.set()
        stalled_render.join(timeout=10)
    assert is_kept(store, ImageDigest.of_bytes(first))


def test_the_same_image_asked_for_twice_at_once_is_rendered_once(
    store: DiskThumbnailStore,
) -> None:
    data = encoded(Image.new("RGB", (64, 64), (0, 200, 0)), "PNG")
    digest = ImageDigest.of_bytes(data)
    stalled, second_copy = StalledUpload(data), CountedUpload(data)
    first_render = threading.Thread(target=render, args=(store, digest, stalled), daemon=True)
    second_render = threading.Thread(target=render, args=(store, digest, second_copy), daemon=True)
    try:
        first_render.start()
        assert stalled.reading.wait(timeout=10)
        second_render.start()
    finally:
        stalled.go_on.set()
        first_render.join(timeout=10)
        second_render.join(timeout=10)

    assert not first_render.is_alive()
    assert not second_render.is_alive()
    assert second_copy.reads == 0
    assert is_kept(store, digest)


def test_float_image_is_stretched_to_visible_grey_not_black(store: DiskThumbnailStore) -> None:
    # Float TIFFs often hold 0..1; a plain convert would make every pixel 0 or 1: black.
    ramp = Image.linear_gradient("L").resize((64, 64)).point(lambda value: value / 255, "F")

    thumbnail = make(store, encoded(ramp, "TIFF"))

    low, high = cast(tuple[int, int], thumbnail.convert("L").getextrema())  # one band: a pair
    assert low < 10
    assert high > 245
