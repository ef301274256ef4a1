"""A real `captioner serve` (gunicorn, tiny real model) keeping its images in an S3 bucket."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.end_to_end.test_crash_safety import CAPTIONER, ServerProcess, png
from tests.support.data_dir import stored_images
from tests.support.s3 import S3Bucket


@pytest.fixture
def s3_server(tiny_blip_dir: Path, tmp_path: Path, s3_bucket: S3Bucket) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_blip_dir, tmp_path / "data", tmp_path / "server.log")
    # os.environ carries the bucket's AWS_* variables (set by the s3_bucket fixture).
    process.env = {**process.env, **os.environ, "CAPTIONER_STORE_URL": s3_bucket.store_url}
    yield process
    if process.process is not None:
        process.kill()


@pytest.mark.slow
def test_a_served_replica_keeps_images_in_the_bucket_only(
    s3_server: ServerProcess, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    s3_server.start()
    first = s3_server.upload(png(1)).json()
    again = s3_server.upload(png(1)).json()
    other = s3_server.upload(png(2)).json()

    file = requests.get(f"{s3_server.url}/images/{first['id']}/file", timeout=30)
    thumbnail = requests.get(f"{s3_server.url}/images/{other['id']}/thumbnail", timeout=30)
    deleted = requests.delete(f"{s3_server.url}/images/{other['id']}", timeout=30)
    check = subprocess.run(
        [CAPTIONER, "check", "--repair", "--orphan-grace", "0"],
        env=s3_server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert (first["duplicate"], again["duplicate"], other["duplicate"]) == (False, True, False)
    assert file.content == png(1)
    assert file.headers["Content-Length"] == str(len(png(1)))
    assert thumbnail.headers["Content-Type"] == "image/webp"
    assert deleted.status_code == 200
    assert check.returncode == 0, check.stdout + check.stderr
    assert "checked 1 files, 1 records: no problems" in check.stdout
    assert len(s3_bucket.object_keys()) == 1
    assert stored_images(tmp_path / "data") == []
