"""The caption queue with real processes: `captioner serve` (with and without a model) and
`captioner worker` on real SQLite and PostgreSQL, an `openai:` model server stub, SIGKILLs.

Grouped by set-up: one server with a model on SQLite (model server down, poison image), two
workers and two model-less replicas on PostgreSQL (mixed uploads, a worker killed mid-batch),
and every process killed at random on SQLite. Leases, polls and heartbeats are short here.
"""

from __future__ import annotations

import io
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from PIL import Image

from tests.support.openai_server import RunningServer, openai_server
from tests.support.postgres import PostgresServer
from tests.support.prometheus import sample
from tests.support.replicas import CAPTIONER, ReplicaProcess

pytestmark = pytest.mark.slow

LEASE_S = 2.0
SETTLED = ("captioned", "failed")


def queue_env(model_server: RunningServer, data_dir: Path, **more: str) -> dict[str, str]:
    return {
        "CAPTIONER_MODEL": "openai:tiny-vlm",
        "CAPTIONER_OPENAI_BASE_URL": model_server.base_url,
        "CAPTIONER_OPENAI_RETRIES": "0",
        "CAPTIONER_DATA_DIR": str(data_dir),
        "CAPTIONER_CLAIM_LEASE_S": str(LEASE_S),
        "CAPTIONER_QUEUE_POLL_S": "0.1",
        "CAPTIONER_WORKER_HEARTBEAT_S": "0.3",
        "CAPTIONER_RETRY_BACKOFF_S": "0.2",
        "CAPTIONER_CAPTION_TIMEOUT_S": "60",
        "CAPTIONER_CHECK_ON_START": "false",
        "CAPTIONER_THREADS": "16",
        "CAPTIONER_AUTH": "off",
        **more,
    }


def worker_process(env: dict[str, str], log: Path) -> ReplicaProcess:
    return ReplicaProcess([CAPTIONER, "worker"], env, log)


def png(index: int, size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (index % 256, (index // 256) % 256, 77)).save(buffer, "PNG")
    return buffer.getvalue()


def upload(url: str, data: bytes, wait: bool = False, timeout_s: float = 60) -> requests.Response:
    headers = {} if wait else {"Prefer": "respond-async"}
    return requests.post(
        f"{url}/upload", files={"image": ("p.png", data)}, headers=headers, timeout=timeout_s
    )


def record(url: str, image_id: int) -> dict[str, Any]:
    response = requests.get(f"{url}/images/{image_id}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_until(what: str, done: Callable[[], bool], timeout_s: float = 60) -> float:
    """Seconds it took for ``done()``; fails with ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def statuses(url: str, ids: list[int]) -> list[str]:
    return [record(url, i)["status"] for i in ids]


def model_runs(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sample(text, "captioner_captions_generated_total")


# --- one server with a model, on SQLite ---------------------------------------------------


@dataclass
class OneServer:
    server: ReplicaProcess
    model_server: RunningServer


@pytest.fixture(scope="module")
def one_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneServer]:
    root = tmp_path_factory.mktemp("queue-one")
    with openai_server() as model_server:
        server = ReplicaProcess.serve(queue_env(model_server, root / "data"), root / "serve.log")
        server.start()
        try:
            server.wait_until_ready()
            yield OneServer(server, model_server)
        finally:
            server.stop()


def test_async_uploads_kept_while_the_model_server_is_down_are_captioned_once_when_it_is_back(
    one_server: OneServer,
) -> None:
    url, state = one_server.server.url, one_server.model_server.state
    runs_before, answered_before = model_runs(url), len(state.requests)
    state.mode = "fail"  # the engine answers 500 to everything
    try:
        answers = [upload(url, png(100 + n)) for n in range(40)]
        ids = [answer.json()["id"] for answer in answers]
        assert [a.status_code for a in answers] == [202] * 40
        assert all(
            a.headers["Location"] == f"/images/{i}" for a, i in zip(answers, ids, strict=True)
        )
        assert {a.headers["Preference-Applied"] for a in answers} == {"respond-async"}
        time.sleep(1.0)  # the queue worker tries meanwhile
        assert set(statuses(url, ids)) == {"pending"}
        assert requests.get(f"{url}/queue", timeout=10).json()["pending"] == 40
    finally:
        state.mode = "ok"

    took = wait_until(
        "all 40 captioned", lambda: set(statuses(url, ids)) == {"captioned"}, timeout_s=60
    )

    assert model_runs(url) - runs_before == 40
    assert len(state.requests) - answered_before == 40
    assert all(record(url, i)["description"].startswith("an image of") for i in ids)
    print(f"40 queued captions done {took:.1f} s after the model server came back")


def test_a_poison_image_fails_after_max_attempts_and_twenty_others_are_captioned(
    one_server: OneServer,
) -> None:
    url, state = one_server.server.url, one_server.model_server.state
    state.refuse_sizes.add((29, 13))
    try:
        poison = upload(url, png(1, size=(29, 13))).json()["id"]
        others = [upload(url, png(300 + n)).json()["id"] for n in range(20)]

        wait_until("all settled", lambda: set(statuses(url, [poison, *others])) <= set(SETTLED), 60)
    finally:
        state.refuse_sizes.clear()

    failed = record(url, poison)
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert "image too large for context" in failed["failure"]
    assert set(statuses(url, others)) == {"captioned"}
    assert requests.get(f"{url}/queue", timeout=10).json()["counts"]["failed"] >= 1


# --- two workers and two model-less replicas on PostgreSQL -----------------------------------


@dataclass
class Cluster:
    workers: list[ReplicaProcess]
    replicas: list[ReplicaProcess]
    model_server: RunningServer
    database_url: str
    env: dict[str, str]
    root: Path

    def alive_workers(self) -> int:
        body = requests.get(f"{self.replicas[0].url}/queue", timeout=10).json()
        return int(body["workers_alive"])


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("queue-cluster")
    database = postgres_server.create_database()
    url = postgres_server.url(database)
    with openai_server() as model_server:
        env = queue_env(model_server, root / "data", CAPTIONER_DATABASE_URL=url)
        workers = [worker_process(env, root / f"worker-{n}.log") for n in range(2)]
        replicas = [
            ReplicaProcess([CAPTIONER, "serve", "--no-model"], env, root / f"replica-{n}.log")
            for n in range(2)
        ]
        try:
            for process in [*workers, *replicas]:
                process.start()
            for replica in replicas:  # ready once a worker is alive
                replica.wait_until_ready()
            made = Cluster(workers, replicas, model_server, url, env, root)
            wait_until("two workers alive", lambda: made.alive_workers() == 2)
            yield made
        finally:
            for process in [*workers, *replicas]:
                process.stop()
            postgres_server.drop_database(database)


def test_mixed_uploads_through_model_less_replicas_are_each_captioned_once_by_the_workers(
    cluster: Cluster,
) -> None:
    state = cluster.model_server.state
    answered_before = len(state.requests)

    def send(n: int) -> requests.Response:
        return upload(cluster.replicas[n % 2].url, png(1000 + n), wait=n % 2 == 0)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(100)))

    sync = [a for n, a in enumerate(answers) if n % 2 == 0]
    assert [a.status_code for a in sync] == [200] * 50
    assert all(a.json()["status"] == "captioned" for a in sync)
    assert all(a.json()["description"].startswith("an image of") for a in sync)
    assert [a.status_code for n, a in enumerate(answers) if n % 2] == [202] * 50
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 100
    url = cluster.replicas[1].url
    wait_until("all captioned", lambda: set(statuses(url, ids)) == {"captioned"})
    assert len(state.requests) - answered_before == 100  # each image's model run, once
    listed = requests.get(f"{url}/images", params={"limit": 1000}, timeout=10).json()
    assert set(ids) <= {item["id"] for item in listed}


def test_a_worker_killed_mid_batch_has_its_images_captioned_by_the_other_within_a_lease(
    cluster: Cluster,
) -> None:
    state = cluster.model_server.state
    doomed, other = cluster.workers
    assert doomed.process is not None
    assert other.process is not None
    # Both paused while the images arrive; the doomed one wakes first and takes them all.
    os.kill(other.process.pid, signal.SIGSTOP)
    os.kill(doomed.process.pid, signal.SIGSTOP)
    state.answer_delay_s = 60.0
    try:
        ids = [upload(cluster.replicas[0].url, png(5000 + n)).json()["id"] for n in range(6)]
        os.kill(doomed.process.pid, signal.SIGCONT)
        wait_until("the batch is at the model", lambda: state.in_flight == 6)
        with psycopg.connect(cluster.database_url) as db:
            owners = {row[0] for row in db.execute("SELECT owner FROM caption_claims")}
        assert {owner.split("/")[1] for owner in owners} == {str(doomed.process.pid)}
        doomed.kill()
    finally:
        state.answer_delay_s = 0.0
        os.kill(other.process.pid, signal.SIGCONT)
    killed_at = time.monotonic()

    url = cluster.replicas[0].url
    wait_until("taken over", lambda: set(statuses(url, ids)) == {"captioned"}, LEASE_S + 10)
    took = time.monotonic() - killed_at

    assert took < LEASE_S + 2.0, took  # the lease, one poll and the captions
    print(f"a killed worker's batch captioned by the other {took:.1f} s after the kill")
    replacement = worker_process(cluster.env, cluster.root / "worker-replacement.log")
    replacement.start()
    cluster.workers[0] = replacement


# --- every process killed at random, on SQLite --------------------------------------------


def test_uploads_answered_while_every_process_is_killed_at_random_all_end_settled(
    tmp_path: Path,
) -> None:
    chance = random.Random(23)
    with openai_server() as model_server:
        model_server.state.answer_delay_s = 0.05
        env = queue_env(model_server, tmp_path / "data")
        server = ReplicaProcess.serve(env, tmp_path / "serve.log")
        processes = [server, worker_process(env, tmp_path / "worker.log")]
        for process in processes:
            process.start()
        server.wait_until_ready()
        accepted: dict[int, int] = {}  # upload number -> record id
        uploading = threading.Event()
        uploading.set()
        kills = []

        def chaos() -> None:
            while uploading.is_set():
                time.sleep(chance.uniform(0.1, 0.5))
                victim = chance.choice(processes)
                victim.kill()
                kills.append(victim)
                victim.start()
                if victim is server:  # uploads get through between kills
                    server.wait_until_ready()

        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()
        try:
            for n in range(200):
                while n not in accepted:  # a refused or unanswered upload is sent again
                    try:
                        answer = upload(server.url, png(9000 + n), timeout_s=5)
                    except requests.RequestException:
                        time.sleep(0.05)
                        continue
                    if answer.status_code in (200, 202):
                        accepted[n] = answer.json()["id"]
        finally:
            uploading.clear()
            killer.join()
        try:
            server.wait_until_ready()
            ids = sorted(set(accepted.values()))
            wait_until(
                "every accepted upload settled",
                lambda: set(statuses(server.url, ids)) <= set(SETTLED),
                timeout_s=90,
            )
            records = [record(server.url, i) for i in ids]
        finally:
            for process in processes:
                process.stop()

    assert len(ids) == 200  # none lost: every answered id is still there
    assert all(r["status"] == "captioned" or r["failure"] for r in records)
    assert {id(victim) for victim in kills} == {id(p) for p in processes}  # each killed
    captioned = sum(r["status"] == "captioned" for r in records)
    print(f"{captioned} of 200 captioned after {len(kills)} SIGKILLs")
