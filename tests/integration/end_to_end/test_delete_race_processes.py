"""The cross-replica delete race, between real processes: an upload answered 200 keeps its file.

Two replicas share one catalogue and one store: on SQLite, two processes over one data dir;
on PostgreSQL, two processes over one database and one S3 bucket (moto). In each round one
replica deletes the last record of some bytes while the other uploads the same bytes, at
once. Whatever the interleaving, a record the upload answered 200 with (and no one deleted
since) must have its file, read back through the other replica and checked by SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support.replicas import ReplicaProcess
from tests.support.s3 import S3Bucket

pytestmark = pytest.mark.slow

ROUNDS = 500
ROUNDS_AT_ONCE = 4  # distinct bytes per round, so rounds in flight never meet


@dataclass(frozen=True)
class Round:
    seed: int  # the id of the last record of the bytes, which the deleter removes
    deleted: requests.Response
    uploaded: requests.Response


@pytest.fixture(params=["sqlite", "postgresql+s3"])
def two_replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[ReplicaProcess]]:
    env = {
        "CAPTIONER_DATA_DIR": str(tmp_path / "data"),  # SQLite's file and the images' dir
        "CAPTIONER_MODEL": "shared-model",
        "CAPTIONER_CHECK_ON_START": "false",
        "CAPTIONER_THREADS": "8",
        # A local disk deletes in microseconds, too quick for another process's upload to
        # land between the delete's count and its unlink; a slow disk (or S3) takes longer.
        "TEST_STORE_DELETE_DELAY_S": "0.01",
    }
    if request.param == "postgresql+s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        env["CAPTIONER_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["CAPTIONER_STORE_URL"] = bucket.store_url
    # The real app, catalogue and store; the model a fake that answers at once, so the rounds
    # spend their time where the race is (storing and deleting), not in a model.
    replicas = [ReplicaProcess.slowed(env, tmp_path / f"replica-{n}.log", 0) for n in range(2)]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_until_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.kill()


def png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (index % 256, index // 256, 7)).save(buffer, "PNG")
    return buffer.getvalue()


def play(deleter: ReplicaProcess, uploader: ReplicaProcess, images: list[bytes]) -> list[Round]:
    """Seed each image on the deleter, then race its delete there against its upload on the
    uploader; a few rounds at a time, each pair released together (random jitter of a few ms
    spreads the interleavings)."""
    with ThreadPoolExecutor(ROUNDS_AT_ONCE * 2) as pool:
        seeds = list(pool.map(deleter.upload, images))
        assert [s.status_code for s in seeds] == [200] * len(images)
        jitter = random.Random(25)

        def delete(record_id: int, after_s: float) -> requests.Response:
            time.sleep(after_s)
            return requests.delete(f"{deleter.url}/images/{record_id}", timeout=60)

        def upload(image: bytes, after_s: float) -> requests.Response:
            time.sleep(after_s)
            return uploader.upload(image, timeout_s=60)

        pairs: list[tuple[int, Future[requests.Response], Future[requests.Response]]] = []
        for image, seed in zip(images, seeds, strict=True):
            seed_id = int(seed.json()["id"])
            pairs.append(
                (
                    seed_id,
                    pool.submit(delete, seed_id, jitter.uniform(0, 0.004)),
                    pool.submit(upload, image, jitter.uniform(0, 0.004)),
                )
            )
        return [Round(seed, d.result(), u.result()) for seed, d, u in pairs]


def file_sha256(replica: ReplicaProcess, record_id: int) -> str | None:
    response = requests.get(f"{replica.url}/images/{record_id}/file", timeout=60)
    return hashlib.sha256(response.content).hexdigest() if response.status_code == 200 else None


def test_an_upload_racing_a_delete_on_another_replica_never_loses_its_file(
    two_replicas: list[ReplicaProcess],
) -> None:
    deleter, uploader = two_replicas
    images = [png(n) for n in range(ROUNDS)]

    rounds = play(deleter, uploader, images)

    assert [r.deleted.status_code for r in rounds] == [200] * ROUNDS
    assert [r.uploaded.status_code for r in rounds] == [200] * ROUNDS
    # An upload that met the seed before its delete answered with the seed, gone since; every
    # other answer is a new record, and nothing deletes it: its file must be there.
    kept = [r.uploaded.json() for r in rounds if r.uploaded.json()["id"] != r.seed]
    with ThreadPoolExecutor(ROUNDS_AT_ONCE * 2) as pool:
        read_back = list(pool.map(lambda body: file_sha256(deleter, body["id"]), kept))
    lost = [body["id"] for body, got in zip(kept, read_back, strict=True) if got != body["sha256"]]
    listed = requests.get(f"{uploader.url}/images", params={"limit": 1000}, timeout=60).json()
    print(f"\n{len(kept)} of {ROUNDS} uploads stored a new record while its bytes were deleted")
    assert lost == []
    assert sorted(item["id"] for item in listed) == sorted(body["id"] for body in kept)
    assert kept, "no round raced: the test exercised nothing"
