"""Crashes and failures: a killed server loses nothing it acknowledged; `check` finds, repairs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dependency_injector import providers
from PIL import Image

from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app
from tests.support.data_dir import (
    contents,
    row_paths,
    rows,
    sha256_of,
    snapshot,
    stored_images,
)
from tests.support.fakes import RecordingCaptioner
from tests.support.live_server import free_port

CAPTIONER = str(Path(sys.executable).with_name("captioner"))


def png(index: int, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (index % 256, (index // 256) % 256, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def captioner_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPTIONER_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [CAPTIONER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# --- a real `captioner serve` in a subprocess -------------------------------------------------


class ServerProcess:
    """`captioner serve` (gunicorn, threads, tiny real model) in its own process group."""

    def __init__(self, model_dir: Path, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "CAPTIONER_HOST": "127.0.0.1",
            "CAPTIONER_PORT": str(self.port),
            "CAPTIONER_MODEL": str(model_dir),
            "CAPTIONER_DATA_DIR": str(data_dir),
            "CAPTIONER_THREADS": "4",
            "CAPTIONER_TORCH_THREADS": "1",
            "CAPTIONER_MAX_NEW_TOKENS": "4",
            "CAPTIONER_MAX_UPLOAD_MB": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [CAPTIONER, "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: master and worker die together
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or busy loading: ask again
            time.sleep(0.1)
        raise AssertionError(f"server not ready in time:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL the whole server (gunicorn master and worker): no clean-up of any kind."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def upload(self, data: bytes, name: str = "photo.png") -> requests.Response:
        return requests.post(f"{self.url}/upload", files={"image": (name, data)}, timeout=60)


@pytest.fixture
def server(tiny_blip_dir: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_blip_dir, tmp_path / "data", tmp_path / "server.log")
    yield process
    if process.process is not None:
        process.kill()  # its data dir is thrown away: no need to wait for a graceful stop


class UploadStream:
    """Clients uploading distinct images back to back, until the server goes away."""

    def __init__(self, server: ServerProcess, clients: int = 3) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._next = 0
        self.acknowledged: list[tuple[bytes, dict[str, Any]]] = []
        self.refused: list[str] = []
        self.in_flight = 0
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> UploadStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._lock:
                index = self._next
                self._next += 1
                self.in_flight += 1
            data = png(index)
            try:
                response = self._server.upload(data, f"{index}.png")
            except requests.RequestException:
                return  # the server died under us: that request was never acknowledged
            finally:
                with self._lock:
                    self.in_flight -= 1
            with self._lock:
                if response.status_code == 200:
                    self.acknowledged.append((data, response.json()))
                else:
                    self.refused.append(response.text)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)


BOUNDARY = "crash-test-boundary"


def chunked_upload(size: int) -> Iterator[bytes]:
    """A multipart body with a ``size``-byte file part, sent in pieces with no length given."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    ).encode()
    for _ in range(size // (64 * 1024)):
        yield bytes(64 * 1024)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def problems(report: subprocess.CompletedProcess[str], kind: str) -> list[str]:
    return [line for line in report.stdout.splitlines() if line.startswith(kind)]


@pytest.mark.slow
def test_server_killed_mid_stream_keeps_every_acknowledged_upload_and_serves_again(
    server: ServerProcess, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server.start()

    with UploadStream(server) as stream:
        deadline = time.monotonic() + 60
        while stream.count() < 8:
            assert time.monotonic() < deadline, "uploads did not flow"
            time.sleep(0.01)
        in_flight_at_kill = stream.in_flight
        server.kill()
    acknowledged = list(stream.acknowledged)

    assert stream.refused == []
    assert in_flight_at_kill >= 1
    after_crash = captioner_cli(data_dir, "check")
    assert problems(after_crash, "missing_file") == [], after_crash.stdout
    assert problems(after_crash, "hash_mismatch") == [], after_crash.stdout
    kept = row_paths(data_dir)
    for data, body in acknowledged:
        assert body["path"] in kept
        assert (data_dir / body["path"]).read_bytes() == data

    server.start()
    fresh = server.upload(png(10_000))
    again = server.upload(acknowledged[0][0])
    # While it is up: gunicorn streams a body without Content-Length, and the limit holds.
    unbounded = requests.post(
        f"{server.url}/upload",
        data=chunked_upload(3 * 1024 * 1024),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=60,
    )
    listed = requests.get(f"{server.url}/images", params={"limit": 1000}, timeout=30).json()

    assert "storage check" in server.log.read_text()
    assert fresh.status_code == 200
    assert again.json()["duplicate"] is True
    assert unbounded.request.headers.get("Transfer-Encoding") == "chunked"
    assert unbounded.status_code == 413
    assert "1 MB" in unbounded.json()["error"]
    assert {body["id"] for _, body in acknowledged} <= {row["id"] for row in listed}
    assert problems(captioner_cli(data_dir, "check"), "missing_file") == []
    # Nothing is uploading now, so even a crash's seconds-old orphans may go.
    repaired = captioner_cli(data_dir, "check", "--repair", "--orphan-grace", "0")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    clean = captioner_cli(data_dir, "check")
    assert clean.returncode == 0, clean.stdout
    assert "no problems" in clean.stdout
    assert len(stored_images(data_dir)) == len(rows(data_dir))


# --- `captioner check [--repair]` on a real data dir ----------------------------------------


def filled_data_dir(data_dir: Path, count: int) -> list[dict[str, Any]]:
    """Upload ``count`` images through the real app (fake model) and return their records."""
    container = build_container(Settings(data_dir=data_dir))
    container.captioner.override(providers.Object(RecordingCaptioner()))
    client = create_app(container).test_client()
    bodies = []
    for index in range(count):
        response = client.post("/upload", data={"image": (io.BytesIO(png(index)), "a.png")})
        assert response.status_code == 200
        bodies.append(response.get_json())
    return bodies


def test_check_reports_and_repair_removes_orphans_temp_files_and_broken_records(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    kept, missing, tampered = filled_data_dir(data_dir, 3)
    orphan = data_dir / "uploads" / "ab" / "cd" / ("ab" + "cd" + "0" * 60 + ".png")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(png(99))
    leftover = data_dir / Path(kept["path"]).parent / ".incoming-k3j9x2"
    leftover.write_bytes(png(98)[:50])  # a write cut short by a crash
    (data_dir / missing["path"]).unlink()
    with (data_dir / tampered["path"]).open("ab") as file:
        file.write(b"tampered")
    # Left by a crash an hour ago: younger files may belong to uploads still in flight.
    an_hour_ago = time.time() - 3600
    for path in (orphan, leftover):
        os.utime(path, (an_hour_ago, an_hour_ago))

    report = captioner_cli(data_dir, "check")

    assert report.returncode == 1
    orphans = problems(report, "orphan_file")
    assert sorted(line.split("\t")[1] for line in orphans) == sorted(
        path.relative_to(data_dir).as_posix() for path in (orphan, leftover)
    )
    assert problems(report, "missing_file") == [
        f"missing_file\t{missing['path']}\trecord {missing['id']}"
    ]
    assert problems(report, "hash_mismatch") == [
        f"hash_mismatch\t{tampered['path']}\trecord {tampered['id']}"
    ]
    assert "4 problem(s)" in report.stdout
    assert orphan.read_bytes() == png(99)  # report mode changed nothing

    repair = captioner_cli(data_dir, "check", "--repair")
    after = captioner_cli(data_dir, "check")

    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "repaired" in repair.stdout
    assert after.returncode == 0
    assert "no problems" in after.stdout
    assert [row[0] for row in rows(data_dir)] == [kept["id"]]
    assert stored_images(data_dir) == [kept["path"]]
    assert sha256_of(data_dir / kept["path"]) == kept["sha256"]


def test_check_on_a_healthy_data_dir_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    filled_data_dir(data_dir, 2)
    before = contents(data_dir)

    report = captioner_cli(data_dir, "check", "--repair")

    assert report.returncode == 0
    assert "checked 2 files, 2 records: no problems" in report.stdout
    assert contents(data_dir) == before


# --- failures inside a request ------------------------------------------------------------


@pytest.mark.slow
def test_model_failure_inside_generate_is_a_clear_500_stores_nothing_and_the_next_works(
    tiny_blip_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    container = build_container(
        Settings(model=str(tiny_blip_dir), data_dir=data_dir, max_new_tokens=4)
    )
    client = create_app(container).test_client()
    assert container.service().wait_until_ready(timeout=120).ready
    before = snapshot(data_dir)
    # The tiny model knows 64 positions: 150 prompt tokens make generate itself raise.
    too_long = " ".join(["a"] * 150)

    failed = client.post(
        "/upload", data={"image": (io.BytesIO(png(1)), "a.png"), "prompt": too_long}
    )

    assert failed.status_code == 500
    assert failed.get_json() == {"error": "The model failed to describe this image (IndexError)."}
    assert snapshot(data_dir) == before
    served = client.post("/upload", data={"image": (io.BytesIO(png(1)), "a.png")})
    assert served.status_code == 200
    assert served.get_json()["duplicate"] is False
    assert len(rows(data_dir)) == 1


def test_unexpected_error_is_a_500_with_a_request_id_and_nothing_stored(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    container = build_container(Settings(data_dir=data_dir))
    captioner = RecordingCaptioner()
    container.captioner.override(providers.Object(captioner))
    client = create_app(container).test_client()
    captioner.fail_with = RuntimeError("a bug in an adapter")
    before = snapshot(data_dir)

    failed = client.post("/upload", data={"image": (io.BytesIO(png(1)), "a.png")})

    body = failed.get_json()
    assert failed.status_code == 500
    assert body["error"] == "internal error"
    assert body["request_id"] == failed.headers["X-Request-ID"]
    assert "a bug in an adapter" not in failed.get_data(as_text=True)
    assert snapshot(data_dir) == before
    captioner.fail_with = None
    assert client.post("/upload", data={"image": (io.BytesIO(png(1)), "a.png")}).status_code == 200
