"""Three `captioner serve` replicas on one PostgreSQL: one model run per image, faults survived."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests
from PIL import Image

from tests.support.concurrency import all_at_once
from tests.support.postgres import PostgresServer
from tests.support.replicas import ReplicaProcess

pytestmark = pytest.mark.slow

LEASE_S = 2.0


@dataclass
class Cluster:
    replicas: list[ReplicaProcess]
    env: dict[str, str]
    database_url: str
    postgres: PostgresServer
    logs: Path


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tiny_blip_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    database = postgres_server.create_database()
    url = postgres_server.url(database)
    env = {
        "CAPTIONER_DATABASE_URL": url,
        "CAPTIONER_DATA_DIR": str(root / "data"),  # shared, as on one machine or an NFS mount
        "CAPTIONER_MODEL": str(tiny_blip_dir),
        "CAPTIONER_CLAIM_LEASE_S": str(LEASE_S),
        "CAPTIONER_THREADS": "8",
        "CAPTIONER_TORCH_THREADS": "1",
        "CAPTIONER_MAX_NEW_TOKENS": "4",
        "CAPTIONER_CHECK_ON_START": "false",
    }
    replicas = [ReplicaProcess.serve(env, root / f"replica-{n}.log") for n in range(3)]
    try:
        for replica in replicas:  # all at once: they race for the migration lock
            replica.start()
        for replica in replicas:
            replica.wait_until_ready()
        yield Cluster(replicas, env, url, postgres_server, root)
    finally:
        for replica in replicas:
            replica.stop()
        postgres_server.drop_database(database)


def png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (index % 256, (index // 256) % 256, 99)).save(buffer, "PNG")
    return buffer.getvalue()


def model_runs(cluster: Cluster) -> float:
    return sum(replica.captions_generated() for replica in cluster.replicas)


def listed_ids(replica: ReplicaProcess) -> set[int]:
    response = requests.get(f"{replica.url}/images", params={"limit": 1000}, timeout=30)
    assert response.status_code == 200
    return {item["id"] for item in response.json()}


def test_one_new_image_uploaded_to_every_replica_at_once_is_captioned_once(
    cluster: Cluster,
) -> None:
    before = model_runs(cluster)
    image = png(1)

    responses = all_at_once(24, lambda n: cluster.replicas[n % 3].upload(image))

    assert [r.status_code for r in responses] == [200] * 24
    bodies = [r.json() for r in responses]
    assert [body["duplicate"] for body in bodies].count(False) == 1
    assert len({body["id"] for body in bodies}) == 1
    assert model_runs(cluster) - before == 1


def test_distinct_uploads_spread_over_replicas_are_listed_on_every_replica(
    cluster: Cluster,
) -> None:
    responses = all_at_once(30, lambda n: cluster.replicas[n % 3].upload(png(1000 + n)))

    assert [r.status_code for r in responses] == [200] * 30
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 30
    for replica in cluster.replicas:
        assert ids <= listed_ids(replica)


def test_a_replica_killed_while_captioning_is_taken_over_within_its_lease(
    cluster: Cluster,
) -> None:
    survivor = cluster.replicas[0]
    started = time.monotonic()
    assert survivor.upload(png(2000)).status_code == 200
    one_caption_s = time.monotonic() - started
    doomed = ReplicaProcess.slowed(cluster.env, cluster.logs / "doomed.log", delay_s=600)
    doomed.start()
    doomed.wait_until_ready()
    image = png(2001)
    lost = threading.Thread(target=_upload_ignoring_failure, args=(doomed, image), daemon=True)
    lost.start()
    _wait_for_claim(cluster.database_url)

    doomed.kill()
    started = time.monotonic()
    response = survivor.upload(image)
    took = time.monotonic() - started

    assert response.status_code == 200
    assert not response.json()["duplicate"]
    # The lease, one caption, and the waiter's poll interval with room for a loaded machine.
    assert took < LEASE_S + one_caption_s + 5, took


def _upload_ignoring_failure(replica: ReplicaProcess, image: bytes) -> None:
    with contextlib.suppress(requests.RequestException):  # killed mid-request: the point
        replica.upload(image)


def _wait_for_claim(url: str) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute("SELECT count(*) FROM caption_claims").fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.05)
    raise AssertionError("the slowed replica never claimed the image")


@dataclass
class Load:
    """Clients uploading distinct images round-robin over the replicas until stopped."""

    cluster: Cluster
    answers: list[tuple[int, dict[str, object], str | None]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 3000

    def run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                index = self._next
                self._next += 1
            replica = self.cluster.replicas[index % 3]
            try:
                response = replica.upload(png(index), timeout_s=30)
                body = response.json()
            except (requests.RequestException, ValueError) as error:  # a hang, or not JSON
                self.failures.append(f"{replica.url}: {error}")
                continue
            with self._lock:
                self.answers.append(
                    (response.status_code, body, response.headers.get("Retry-After"))
                )

    def stop(self) -> None:
        self._stop.set()


def test_postgresql_restarted_under_load_gives_503s_then_recovers_losing_nothing(
    cluster: Cluster,
) -> None:
    load = Load(cluster)
    clients = [threading.Thread(target=load.run) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        _wait(lambda: any(status == 200 for status, _, _ in load.answers), "uploads before")
        cluster.postgres.stop()
        try:
            for replica in cluster.replicas:
                ready = requests.get(f"{replica.url}/readyz", timeout=15)
                assert ready.status_code == 503
                assert ready.headers["Retry-After"]
                assert "database" in ready.json()["reason"]
            _wait(lambda: any(status == 503 for status, _, _ in load.answers), "503s while down")
        finally:
            cluster.postgres.start()
        down_answers = len(load.answers)
        for replica in cluster.replicas:
            _wait(lambda: _ready(replica), "readiness back")  # noqa: B023 - waited for at once
        _wait(
            lambda: any(status == 200 for status, _, _ in load.answers[down_answers:]),
            "uploads accepted again",
        )
    finally:
        load.stop()
        for client in clients:
            client.join(timeout=60)

    assert load.failures == []
    assert {status for status, _, _ in load.answers} == {200, 503}
    assert all(retry for status, _, retry in load.answers if status == 503)
    acknowledged = {int(str(body["id"])) for status, body, _ in load.answers if status == 200}
    for replica in cluster.replicas:
        assert acknowledged <= listed_ids(replica)


def _ready(replica: ReplicaProcess) -> bool:
    return requests.get(f"{replica.url}/readyz", timeout=15).status_code == 200


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_processes_sharing_one_sqlite_data_dir_caption_an_image_once(tmp_path: Path) -> None:
    env = {
        "CAPTIONER_DATA_DIR": str(tmp_path / "data"),
        "CAPTIONER_MODEL": "shared-model",
        "CAPTIONER_CHECK_ON_START": "false",
    }
    processes = [
        ReplicaProcess.slowed(env, tmp_path / f"process-{n}.log", delay_s=0.5) for n in range(2)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_until_ready()
        image = png(4000)

        responses = all_at_once(8, lambda n: processes[n % 2].upload(image))

        assert [r.status_code for r in responses] == [200] * 8
        assert [r.json()["duplicate"] for r in responses].count(False) == 1
        assert sum(process.captions_generated() for process in processes) == 1
    finally:
        for process in processes:
            process.kill()
