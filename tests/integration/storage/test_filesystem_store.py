"""FilesystemImageStore on a real directory."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from captioner.adapters.storage.disk import FilesystemImageStore
from captioner.domain.model import ImageDigest
from captioner.entrypoints.http.uploads import SPOOL_BYTES, HashingSpooledFile


def test_files_are_content_addressed_under_uploads(tmp_path: Path) -> None:
    store = FilesystemImageStore(tmp_path)
    data = b"image bytes"
    digest = ImageDigest.of_bytes(data)

    path = store.save(digest, io.BytesIO(data), "png")

    assert path == f"uploads/{digest.hex[:2]}/{digest.hex[2:4]}/{digest.hex}.png"
    assert (tmp_path / path).read_bytes() == data
    assert store.digest_of(path) == digest
    assert list(store.paths()) == [path]


def test_different_bytes_never_share_a_path(tmp_path: Path) -> None:
    store = FilesystemImageStore(tmp_path)
    a = store.save(ImageDigest.of_bytes(b"a"), io.BytesIO(b"a"), "jpg")
    b = store.save(ImageDigest.of_bytes(b"b"), io.BytesIO(b"b"), "jpg")

    assert a != b
    assert (tmp_path / a).read_bytes() == b"a"
    assert (tmp_path / b).read_bytes() == b"b"


def test_saving_leaves_no_temp_files_behind(tmp_path: Path) -> None:
    store = FilesystemImageStore(tmp_path)
    store.save(ImageDigest.of_bytes(b"x"), io.BytesIO(b"x"), "gif")
    store.save(ImageDigest.of_bytes(b"x"), io.BytesIO(b"x"), "gif")  # already there: no-op

    files = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert not files[0].name.startswith(".incoming")


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    class Broken(io.BytesIO):
        def read(self, *args: object) -> bytes:
            raise OSError("disk on fire")

    store = FilesystemImageStore(tmp_path)
    with pytest.raises(OSError, match="disk on fire"):
        store.save(ImageDigest.of_bytes(b"x"), Broken(b"x"), "png")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "path", ["../outside.png", "/etc/passwd", "uploads/../../x", "captioner.sqlite3"]
)
def test_paths_outside_the_uploads_dir_cannot_be_opened_or_deleted(
    tmp_path: Path, path: str
) -> None:
    store = FilesystemImageStore(tmp_path / "data")
    with pytest.raises(ValueError, match="outside"):
        store.open(path)
    with pytest.raises(ValueError, match="outside"):
        store.delete(path)
    assert not store.exists(path)


def test_extension_must_be_a_plain_format_name(tmp_path: Path) -> None:
    store = FilesystemImageStore(tmp_path)
    with pytest.raises(ValueError, match="extension"):
        store.save(ImageDigest.of_bytes(b"x"), io.BytesIO(b"x"), "../../x")


def test_readiness_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert not FilesystemImageStore(blocker).readiness().ready
    assert FilesystemImageStore(tmp_path / "ok").readiness().ready


class Unreadable(io.BytesIO):
    def read(self, *args: object) -> bytes:
        raise AssertionError("the bytes were copied instead of linked")


def test_a_file_on_the_same_disk_is_linked_into_place_not_copied(tmp_path: Path) -> None:
    store = FilesystemImageStore(tmp_path)
    spooled = tmp_path / "spooled-upload"
    spooled.write_bytes(b"big image")

    path = store.save(ImageDigest.of_bytes(b"big image"), Unreadable(), "png", str(spooled))

    assert (tmp_path / path).read_bytes() == b"big image"
    assert (tmp_path / path).stat().st_ino == spooled.stat().st_ino
    assert spooled.exists()  # still the caller's


def test_a_file_that_cannot_be_linked_is_copied_from_the_stream(tmp_path: Path) -> None:
    store = FilesystemImageStore(tmp_path)

    path = store.save(
        ImageDigest.of_bytes(b"x"), io.BytesIO(b"x"), "png", str(tmp_path / "not-there")
    )

    assert (tmp_path / path).read_bytes() == b"x"


def test_a_big_spooled_upload_becomes_the_stored_file_and_leaves_no_spool_behind(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (SPOOL_BYTES // 256 + 1)
    spool = HashingSpooledFile(str(tmp_path))
    spool.write(data)
    store = FilesystemImageStore(tmp_path)

    local_path = spool.local_path
    assert local_path is not None
    path = store.save(spool.digest, Unreadable(), "png", local_path)
    spool.close()

    assert (tmp_path / path).read_bytes() == data
    assert store.digest_of(path) == ImageDigest.of_bytes(data)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / path]


def test_a_small_spooled_upload_stays_in_memory_and_offers_no_file(tmp_path: Path) -> None:
    with HashingSpooledFile(str(tmp_path)) as spool:
        spool.write(b"small")

        assert spool.local_path is None
