"""The ceiling line of `make bench`: distinct uploads/s of `captioner serve` on a near-free model
against a bare app doing the least a durable upload needs, same threads, same run.

With a fast model (a GPU, a remote engine) the service itself is the bottleneck. The model here
is the tiny random-weight BLIP with ``max_new_tokens`` 1, ``compile`` off. The floor is a plain
WSGI app under gunicorn with the worker settings `captioner serve` uses (one gthread worker, 16
threads): it parses the multipart body (werkzeug's parser), hashes it, decodes it with Pillow,
writes it with fsync (file and folder) and inserts one row into SQLite (WAL, synchronous=FULL).
Both servers run side by side on free 127.0.0.1 ports; 16 client threads upload distinct
640x480 JPEGs to one, then the other, in interleaved rounds, so a load change on a shared
machine hits both alike. Prints uploads/s a round and the ratio, PASS/FAIL against the target.

Standalone: ``python bench/ceiling.py [--rounds 3] [--uploads 20]`` (uploads a client a round);
`make bench` calls ``measure`` and adds ``lines``/``verdicts`` to its report.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support.models builds the model

CLIENTS = 16
THREADS = 16  # `captioner serve`'s default threads setting, which the floor app gets too
CEILING_MIN_RATIO = 0.7  # issue 22, item 4
_FLOOR_DIR = "CAPTIONER_BENCH_FLOOR_DIR"


def measure(work: Path, rounds: int = 3, uploads: int = 20) -> dict[str, Any]:
    """uploads/s of the floor app and of the service, ``rounds`` interleaved rounds each."""
    from tests.support.models import build_blip

    from bench.bench import Client, log, multipart, photo, running_server, wait_until_ready

    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_blip(work / "tiny-blip", max_new_tokens=1)
    per_round = CLIENTS * uploads
    log(f"ceiling: making {per_round * (rounds + 1)} distinct 640x480 JPEGs")
    # Round r sends the same photos to both servers: each is new to each (own data dirs).
    forms = [
        multipart(photo(10_000 + n), f"photo-{n}.jpg") for n in range(per_round * (rounds + 1))
    ]
    batches = [forms[r * per_round : (r + 1) * per_round] for r in range(rounds + 1)]
    service_settings = {
        "CAPTIONER_MAX_NEW_TOKENS": "1",
        "CAPTIONER_THREADS": str(THREADS),
        "CAPTIONER_TORCH_THREADS": "1",
    }
    floor_s: list[float] = []
    service_s: list[float] = []
    floor_cpu_ms: list[float] = []
    service_cpu_ms: list[float] = []
    with (
        running_server(
            model_dir, work / "service", work / "service.log", "", "off", service_settings
        ) as service_port,
        running_floor(work / "floor", work / "floor.log") as floor_port,
    ):
        wait_until_ready(service_port, work / "service.log")
        wait_until_ready(floor_port, work / "floor.log")
        Client(service_port).upload(forms[0])  # first upload: the model warm, the row cache
        for number, batch in enumerate(batches):
            floor, floor_cpu = _uploads_per_s(floor_port, batch, f"127.0.0.1:{floor_port}")
            service, service_cpu = _uploads_per_s(service_port, batch, f"--port {service_port}")
            if number == 0:
                log(f"ceiling warm-up: floor {floor:.0f}/s, service {service:.0f}/s")
                continue
            floor_s.append(floor)
            service_s.append(service)
            floor_cpu_ms.append(floor_cpu * 1000)
            service_cpu_ms.append(service_cpu * 1000)
            log(
                f"ceiling round {number}: floor {floor:.0f}/s ({floor_cpu * 1000:.1f} ms CPU an "
                f"upload), service {service:.0f}/s ({service_cpu * 1000:.1f} ms)"
            )
    ratios = [s / f for s, f in zip(service_s, floor_s, strict=True)]
    return {
        "clients": CLIENTS,
        "threads": THREADS,
        "uploads_a_round": per_round,
        "floor_per_s": floor_s,
        "service_per_s": service_s,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "floor_cpu_ms": floor_cpu_ms,
        "service_cpu_ms": service_cpu_ms,
    }


def _uploads_per_s(
    port: int, batch: Sequence[tuple[bytes, str]], command_mark: str
) -> tuple[float, float]:
    """uploads/s of one round, and the CPU seconds the server's processes spent an upload."""
    from bench.bench import concurrent_uploads

    work = [batch[client::CLIENTS] for client in range(CLIENTS)]
    cpu_before = _cpu_s(command_mark)
    run = concurrent_uploads(port, work)
    cpu = _cpu_s(command_mark) - cpu_before
    if run.images != len(batch):
        raise RuntimeError(f"{run.images} of {len(batch)} uploads answered")
    return run.images_per_s, cpu / run.images


def _cpu_s(command_mark: str) -> float:
    """User + system CPU seconds of the processes (gunicorn's and its worker's) whose command
    line holds ``command_mark``: on a shared machine the CPU an upload costs moves less with
    the load than the rate does."""
    ticks = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if command_mark not in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_floor(data_dir: Path, log_path: Path) -> Iterator[int]:
    """The floor app under gunicorn (one gthread worker, THREADS threads) on a free port."""
    from bench.bench import free_port, stop_server

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(
        os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}", **{_FLOOR_DIR: str(data_dir)}
    )
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", "1", "--worker-class", "gthread", "--threads", str(THREADS)]
    command += ["--timeout", "120", "--keep-alive", "5", "--no-control-socket"]
    command += ["bench.ceiling:floor_app"]
    with log_path.open("wb") as server_log:
        server = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield port
        finally:
            stop_server(server)


# --- the floor app: runs inside gunicorn -----------------------------------------------------

_connections = threading.local()


def _catalogue() -> sqlite3.Connection:
    """This thread's connection: WAL, synchronous=FULL, as the service's catalogue."""
    db: sqlite3.Connection | None = getattr(_connections, "db", None)
    if db is None:
        db = sqlite3.connect(Path(os.environ[_FLOOR_DIR]) / "floor.sqlite3", isolation_level=None)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute(
            """CREATE TABLE IF NOT EXISTS images (
                   id INTEGER PRIMARY KEY, sha256 TEXT UNIQUE, path TEXT, width INTEGER,
                   height INTEGER, created_at TEXT DEFAULT CURRENT_TIMESTAMP)"""
        )
        _connections.db = db
    return db


def floor_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Receive one multipart image, hash, decode, store it durably, insert its row."""
    from PIL import Image
    from werkzeug.formparser import parse_form_data

    if environ["PATH_INFO"] == "/readyz":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    _stream, _form, files = parse_form_data(environ)
    data = files["image"].read()
    sha256 = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
    folder = Path(os.environ[_FLOOR_DIR]) / "uploads" / sha256[:2]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sha256}.jpg"
    temp = folder / f".incoming-{sha256}-{threading.get_ident()}"
    with temp.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, target)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    db = _catalogue()
    row = db.execute(
        "INSERT INTO images (sha256, path, width, height) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sha256) DO UPDATE SET path = excluded.path RETURNING id",
        (sha256, str(target.relative_to(folder.parents[1])), width, height),
    ).fetchone()
    body = f'{{"id": {row[0]}, "sha256": "{sha256}", "description": ""}}'.encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


# --- the report ------------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, passed): the service's uploads/s over the floor app's."""
    ratio = results["ceiling"]["ratio"]
    return [
        (
            "near-free model: uploads/s / floor app",
            f"{ratio:.2f}x",
            f">= {CEILING_MIN_RATIO}x",
            ratio >= CEILING_MIN_RATIO,
        )
    ]


def lines(results: dict[str, Any]) -> list[str]:
    ceiling = results["ceiling"]

    def each(values: Sequence[float], pattern: str) -> str:
        return " ".join(pattern.format(value) for value in values)

    return [
        "overhead ceiling: tiny BLIP, max_new_tokens=1, compile off, torch_threads 1; "
        f"{ceiling['clients']} clients, {ceiling['threads']} server threads, "
        f"{ceiling['uploads_a_round']} distinct 640x480 JPEGs a round, interleaved:",
        f"  floor app (parse, hash, decode, fsync file + folder, one SQLite row) uploads/s: "
        f"{each(ceiling['floor_per_s'], '{:.0f}')}",
        f"  captioner serve uploads/s: {each(ceiling['service_per_s'], '{:.0f}')}",
        f"  service / floor: {each(ceiling['ratios'], '{:.2f}x')} (median {ceiling['ratio']:.2f}x)",
        f"  server CPU ms an upload (every thread): floor "
        f"{each(ceiling['floor_cpu_ms'], '{:.1f}')}; service "
        f"{each(ceiling['service_cpu_ms'], '{:.1f}')}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--uploads", type=int, default=20, help="uploads a client a round (20)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="captioner-ceiling-") as work:
        results = {"ceiling": measure(Path(work), args.rounds, args.uploads)}
    print("\n".join(lines(results)))
    checks = verdicts(results)
    for what, measured, target, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {what}: {measured} (target {target})")
    return 0 if all(passed for *_, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
