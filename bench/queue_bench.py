"""`make bench BENCH_ARGS=--queue`: distinct uploads/s through the caption queue against
synchronous uploads, with the same model.

Two runs on fresh SQLite data dirs, each with 8 concurrent HTTP clients sending distinct
photos: (sync) one ``captioner serve`` with the model, each upload waiting for its caption;
(async + worker) ``captioner serve --no-model`` answering ``?wait=false`` uploads with 202 and
one ``captioner worker`` with the same model captioning the queue, timed from the first upload
to the last caption. Prints both rates and their ratio; writes bench/results/queue.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.bench import (
    BATCH,
    CLIENTS,
    RESULTS,
    Client,
    free_port,
    log,
    machine,
    multipart,
    photo,
    wait_until_ready,
)

# Settings both runs share; the queue polls often enough not to sit idle between batches.
_SHARED = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "CAPTIONER_CHECK_ON_START": "0",
    "CAPTIONER_COMPILE": "off",
    "CAPTIONER_QUEUE_BATCH": str(BATCH),
    "CAPTIONER_QUEUE_POLL_S": "0.05",
}


@contextmanager
def process(command: Sequence[str], env: dict[str, str], log_path: Path) -> Iterator[None]:
    with log_path.open("wb") as output:
        running = subprocess.Popen(
            list(command), env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield
        finally:
            running.send_signal(signal.SIGTERM)
            try:
                running.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(running.pid, signal.SIGKILL)  # the group this bench started
                running.wait(timeout=30)


def captioner(*args: str) -> list[str]:
    executable = Path(sys.executable).with_name("captioner")
    if executable.exists():
        return [str(executable), *args]
    return [sys.executable, "-m", "captioner.entrypoints.cli", *args]


def environment(model_dir: Path, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    env.update(_SHARED)
    env.update(
        CAPTIONER_MODEL=str(model_dir),
        CAPTIONER_DATA_DIR=str(data_dir),
        CAPTIONER_HOST="127.0.0.1",
        CAPTIONER_PORT=str(port),
    )
    return env


def send_all(port: int, forms: Sequence[tuple[bytes, str]], path: str, expect: int) -> float:
    """Upload every form from CLIENTS threads; seconds from the start to the last answer."""
    shares = [forms[n::CLIENTS] for n in range(CLIENTS)]
    start = threading.Barrier(CLIENTS + 1)
    errors: list[BaseException] = []

    def client(mine: Sequence[tuple[bytes, str]]) -> None:
        connection = Client(port)
        try:
            start.wait()
            for body, content_type in mine:
                status, answer = connection.request("POST", path, body, content_type)
                if status != expect:
                    raise RuntimeError(f"upload answered {status}: {answer}")
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - began


def drained(port: int, began: float, timeout_s: float = 3600) -> float:
    """Seconds from ``began`` until the queue has nothing pending."""
    client = Client(port)
    try:
        while time.perf_counter() - began < timeout_s:
            _, body = client.request("GET", "/queue")
            if body["pending"] == 0 and body["counts"]["captioned"] > 0:
                return time.perf_counter() - began
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError("the queue did not drain")


def measure(model_dir: Path, images: int, work_dir: Path) -> dict[str, Any]:
    photos = [photo(seed) for seed in range(2 * images + 2 * BATCH)]
    forms = [multipart(data, f"photo-{n}.jpg") for n, data in enumerate(photos)]
    warm, sync_forms, async_forms = (
        forms[: 2 * BATCH],
        forms[2 * BATCH : 2 * BATCH + images],
        forms[2 * BATCH + images :],
    )

    port = free_port()
    env = environment(model_dir, work_dir / "sync", port)
    with process(captioner("serve"), env, work_dir / "sync.log"):
        wait_until_ready(port, work_dir / "sync.log")
        send_all(port, warm[:BATCH], "/upload", 200)  # first batches pay one-off costs
        log(f"sync: {images} distinct uploads from {CLIENTS} clients")
        sync_s = send_all(port, sync_forms, "/upload", 200)

    port = free_port()
    env = environment(model_dir, work_dir / "queue", port)
    with (
        process(captioner("serve", "--no-model"), env, work_dir / "api.log"),
        process(captioner("worker"), env, work_dir / "worker.log"),
    ):
        wait_until_ready(port, work_dir / "api.log")  # ready once the worker's heartbeat is in
        send_all(port, warm[BATCH:], "/upload", 200)
        log(f"async + worker: {images} distinct uploads from {CLIENTS} clients")
        began = time.perf_counter()
        accepted_s = send_all(port, async_forms, "/upload?wait=false", 202)
        captioned_s = drained(port, began)
    return {
        "images": images,
        "sync_s": sync_s,
        "sync_uploads_per_s": images / sync_s,
        "async_accepted_s": accepted_s,
        "async_accepted_per_s": images / accepted_s,
        "async_captioned_s": captioned_s,
        "async_captioned_per_s": images / captioned_s,
        "async_over_sync": sync_s / captioned_s,
    }


def main(model_dir: Path, images: int, out: Path | None = None) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="captioner-queue-bench-") as work:
        results = measure(model_dir, images, Path(work))
    results["machine"] = machine()
    out = out or RESULTS / "queue.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"distinct uploads/s, {images} images, {CLIENTS} clients, same model:\n"
        f"  sync (serve with the model)             {results['sync_uploads_per_s']:8.2f}\n"
        f"  async + worker, captioned               {results['async_captioned_per_s']:8.2f}"
        f"   ({results['async_over_sync']:.3f}x sync)\n"
        f"  async, accepted (202)                   {results['async_accepted_per_s']:8.2f}\n"
        f"(figures in {out})"
    )
    return 0
