"""`captioner store copy` from a data dir to an S3 bucket (moto) and back: every file, checked."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from captioner.adapters.imaging.thumbnails import render_thumbnail
from captioner.adapters.storage.disk import FilesystemImageStore
from captioner.adapters.storage.disk_thumbnails import DiskThumbnailStore
from captioner.adapters.storage.s3 import make_s3_client
from captioner.domain.model import ImageDigest
from captioner.entrypoints.cli import main
from tests.conftest import png_bytes
from tests.support.s3 import S3Bucket

FILES = 12


def a_data_dir(data: Path) -> dict[str, bytes]:
    """Stored images and the thumbnail of the first; their paths and bytes."""
    store = FilesystemImageStore(data)
    files = {}
    for n in range(FILES):
        content = png_bytes((n, 100, 200))
        digest = ImageDigest.of_bytes(content)
        files[store.save(digest, io.BytesIO(content), "png")] = content
    first = next(iter(files))
    DiskThumbnailStore(data, render_thumbnail).open_or_make(
        ImageDigest.of_bytes(files[first]), lambda: store.open(first)
    ).content.close()
    return files


@pytest.fixture
def files(tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The data dir in effect (CAPTIONER_DATA_DIR), its files; the bucket's variables are set."""
    monkeypatch.setenv("CAPTIONER_DATA_DIR", str(tmp_path / "data"))
    return a_data_dir(tmp_path / "data")


def keys_in(bucket: S3Bucket) -> list[str]:
    return [key.removeprefix("captioner/") for key in bucket.object_keys()]


def test_a_data_dir_goes_to_a_bucket_and_back_with_the_same_bytes(
    files: dict[str, bytes],
    tmp_path: Path,
    s3_bucket: S3Bucket,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:

    there = main(["store", "copy", "--to", s3_bucket.store_url, "--thumbnails"])
    said_there = capsys.readouterr().out
    monkeypatch.setenv("CAPTIONER_STORE_URL", s3_bucket.store_url)
    back = main(["store", "copy", "--to", f"file://{tmp_path / 'back'}"])
    said_back = capsys.readouterr().out

    assert (there, back) == (0, 0)
    assert f"{FILES} files copied" in said_there
    assert "1 thumbnails made" in said_there
    assert f"{FILES} files copied" in said_back
    assert sorted(key for key in keys_in(s3_bucket) if "thumbnail" not in key) == [
        path.removeprefix("uploads/") for path in sorted(files)
    ]
    assert sum("thumbnail" in key for key in keys_in(s3_bucket)) == 1
    for path, content in files.items():
        assert (tmp_path / "back" / path).read_bytes() == content


def test_a_copy_stopped_part_way_continues_and_skips_the_files_already_there(
    files: dict[str, bytes], s3_bucket: S3Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "copy", "--to", s3_bucket.store_url]) == 0
    client = make_s3_client()
    gone = sorted(files)[:5]  # as if the copy had stopped before these
    for path in gone:
        client.delete_object(
            Bucket=s3_bucket.name, Key=f"captioner/{path.removeprefix('uploads/')}"
        )
    capsys.readouterr()

    again = main(["store", "copy", "--to", s3_bucket.store_url])

    said = capsys.readouterr().out
    assert again == 0
    assert "5 files copied" in said
    assert f"{FILES - 5} already there (SHA-256 checked)" in said
    assert len(keys_in(s3_bucket)) == FILES


def test_other_bytes_under_a_files_name_in_the_target_are_reported_and_left(
    files: dict[str, bytes], s3_bucket: S3Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = sorted(files)[0]
    key = f"captioner/{damaged.removeprefix('uploads/')}"
    make_s3_client().put_object(Bucket=s3_bucket.name, Key=key, Body=b"not these bytes")

    copied = main(["store", "copy", "--to", s3_bucket.store_url])
    said = capsys.readouterr()

    assert copied == 1
    assert f"captioner: {damaged}: the target holds other bytes under this name" in said.err
    assert f"{FILES - 1} files copied" in said.out
    body = make_s3_client().get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
    assert body == b"not these bytes"
