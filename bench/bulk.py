"""The bulk line of `make bench`: images/s of `captioner bulk --engine ray`, `--engine local`
and `captioner caption` on the same images and model (each a fresh catalogue, one run, model
load included), and the catalogue's write rate on PostgreSQL (records/s with an instant
captioner, through describe an image at a time and through describe_many a batch at a time),
which says how many model actors one database serves.

Standalone: ``python bench/bulk.py --model-dir DIR --images N`` (``--writes-only``: the write
rate alone); `make bench` calls ``measure`` and adds ``lines``/``verdicts`` to its report.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# First on the path: `bench` is then this package, not bench/bench.py beside this script.
sys.path.insert(0, str(ROOT))

RAY_MIN_RATIO = 0.9  # Ray's images/s against the one-process engine's, on one machine
WRITERS = 8  # threads writing records, as 8 actors' describe calls would
STARTED = re.compile(r"\(([0-9.]+) images/s once started\)")


def measure(
    model_dir: Path, work: Path, images: int, photo: Any, database_url: str = ""
) -> dict[str, Any]:
    """Images/s per way of captioning the same ``images`` photos (``photo(seed)`` -> JPEG
    bytes), and PostgreSQL's records/s (``database_url``, else a throwaway server)."""
    folder = work / "bulk-photos"
    for seed in range(images):
        path = folder / f"part{seed % 4}" / f"{seed}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo(10_000 + seed))
    ways = {
        "ray": ["bulk", str(folder), "--engine", "ray"],
        "local": ["bulk", str(folder), "--engine", "local"],
        "caption": ["caption", "-r", str(folder)],
    }
    results: dict[str, Any] = {"images": images, "model": model_dir.name}
    for name, command in ways.items():
        seconds, summary = _timed_command(command, model_dir, work / f"data-{name}")
        results[f"{name}_images_per_s"] = images / seconds
        results[f"{name}_s"] = seconds
        started = STARTED.search(summary)
        if started:  # bulk's own figure: from the first model batch to the last
            results[f"{name}_started_images_per_s"] = float(started.group(1))
    results["ray_over_local"] = results["ray_images_per_s"] / results["local_images_per_s"]
    results["ray_over_local_started"] = (
        results["ray_started_images_per_s"] / results["local_started_images_per_s"]
    )
    results.update(catalogue_write_rate(work / "writes", database_url))
    return results


# The ways the write rate is measured: (result key, writes batched, files kept in memory).
# Files in memory: the catalogue's own ceiling (a shared bucket scales apart from it); on
# disk: with this machine's durable file writes (temp file, fsync, rename) in the way.
WRITE_WAYS = (
    ("write_records_per_s", False, True),
    ("write_batched_records_per_s", True, True),
    ("write_disk_records_per_s", False, False),
    ("write_disk_batched_records_per_s", True, False),
)


def catalogue_write_rate(work: Path, database_url: str, records: int = 2000) -> dict[str, Any]:
    """Records/s that ``WRITERS`` threads store when the model costs nothing, each way of
    WRITE_WAYS: an image at a time through describe (claim, file, row each), or a bulk batch
    at a time through describe_many (a claim statement and a transaction per model batch).
    With files in memory it is the ceiling of one catalogue under any number of actors."""
    from tests.support import postgres

    server = None
    urls = [database_url] * len(WRITE_WAYS)
    if not database_url:
        if not postgres.available():
            return {
                **{key: None for key, _, _ in WRITE_WAYS},
                "write_note": postgres.INSTALL_HINT,
            }
        server = postgres.PostgresServer()
        server.start()
        urls = [server.url(server.create_database()) for _ in WRITE_WAYS]
    try:
        # A fresh database each, or, in one given, other images: no way finds another's
        # records.
        rates: dict[str, Any] = {"write_note": ""}
        for number, ((key, batched, in_memory), url) in enumerate(
            zip(WRITE_WAYS, urls, strict=True)
        ):
            first = number * (records + 1)
            rates[key] = _writes(work / key, url, records, first, batched, in_memory)
        return rates
    finally:
        if server is not None:
            server.remove()


def _writes(
    work: Path, database_url: str, records: int, first: int, batched: bool, in_memory: bool
) -> float:
    from dependency_injector import providers
    from tests.support.bulk import distinct_png
    from tests.support.captioners import SizeCaptioner
    from tests.support.fakes import InMemoryImageStore

    from captioner.bulk.plan import READ_BATCH
    from captioner.config import Settings
    from captioner.container import build_container, opened
    from captioner.domain.model import ImageUpload

    settings = Settings(data_dir=work, database_url=database_url, threads=WRITERS)
    container = build_container(settings)
    container.captioner.override(providers.Object(SizeCaptioner()))
    if in_memory:
        container.image_store.override(providers.Object(InMemoryImageStore()))
    uploads = [distinct_png(number) for number in range(first, first + records)]

    def write(part: list[bytes]) -> None:
        if not batched:
            for content in part:
                service.describe(ImageUpload(io.BytesIO(content), "x.png"))
            return
        for start in range(0, len(part), READ_BATCH):  # as a bulk actor gets its batches
            service.describe_many(
                [ImageUpload(io.BytesIO(c), "x.png") for c in part[start : start + READ_BATCH]],
                batch=settings.max_batch,
            )

    with opened(container):
        service = container.service()
        service.describe(ImageUpload(io.BytesIO(distinct_png(first + records)), "warm.png"))
        started = time.perf_counter()
        threads = [
            threading.Thread(target=write, args=(uploads[part::WRITERS],))
            for part in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        stored = sum(1 for _ in service.export())
        if stored != records + 1:
            raise RuntimeError(f"{stored} records stored, {records + 1} expected")
        return records / seconds


def write_lines(results: dict[str, Any], actor_rate: float | None = None) -> list[str]:
    """The write-rate lines: both ways side by side, files in memory and on disk, and the
    actors one database serves at ``actor_rate`` images/s each (when given)."""
    if not results["write_records_per_s"]:
        return [f"catalogue writes on PostgreSQL: {results['write_note']}"]
    lines = []
    for where, one_key, batched_key in (
        ("files in memory", "write_records_per_s", "write_batched_records_per_s"),
        ("files on disk", "write_disk_records_per_s", "write_disk_batched_records_per_s"),
    ):
        one, batched = results[one_key], results[batched_key]
        served = (
            f"; enough for ~{one / actor_rate:.0f} / ~{batched / actor_rate:.0f} actors at "
            "this machine's rate"
            if actor_rate
            else ""
        )
        lines.append(
            f"catalogue writes on PostgreSQL ({WRITERS} writers, instant model, {where}): "
            f"describe {one:.0f} records/s, describe_many {batched:.0f} records/s "
            f"({batched / one:.1f}x){served}"
        )
    return lines


def lines(results: dict[str, Any]) -> list[str]:
    bulk = results["bulk"]
    local = bulk["local_images_per_s"]
    return [
        f"bulk, {bulk['images']} images of {bulk['model']}, start-up and model load included: "
        f"ray {bulk['ray_images_per_s']:.2f} images/s, local {local:.2f}, caption "
        f"{bulk['caption_images_per_s']:.2f} (ray/local {bulk['ray_over_local']:.2f}x)",
        f"bulk once captioning started: ray {bulk['ray_started_images_per_s']:.2f} images/s, "
        f"local {bulk['local_started_images_per_s']:.2f} "
        f"(ray/local {bulk['ray_over_local_started']:.2f}x)",
        *write_lines(bulk, local),
    ]


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    bulk = results["bulk"]
    return [
        (
            f"bulk ray / local images/s{what}",
            f"{ratio:.3f}x",
            f">= {RAY_MIN_RATIO}x",
            ratio >= RAY_MIN_RATIO,
        )
        for what, ratio in (
            ("", bulk["ray_over_local"]),
            (" once started", bulk["ray_over_local_started"]),
        )
    ]


def _timed_command(command: Sequence[str], model_dir: Path, data_dir: Path) -> tuple[float, str]:
    """Seconds the command took, start to exit, and what it printed on stderr."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "CAPTIONER_DATA_DIR": str(data_dir),
        "CAPTIONER_MODEL": str(model_dir),
        "CAPTIONER_DATABASE_URL": "",
        "CAPTIONER_COMPILE": "off",
        # Every way gets every core for torch: a Ray actor's default is its one CPU.
        "CAPTIONER_TORCH_THREADS": str(os.cpu_count() or 1),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "captioner.entrypoints.cli", *command],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=3600,
    )
    return time.perf_counter() - started, done.stderr


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, nargs="+", help="one run of the line per model")
    parser.add_argument(
        "--images", type=int, nargs="+", default=[500], help="images per model (one, or one each)"
    )
    parser.add_argument("--database-url", default=os.environ.get("CAPTIONER_DATABASE_URL", ""))
    parser.add_argument(
        "--writes-only",
        action="store_true",
        help="only the PostgreSQL write rate, describe and describe_many side by side",
    )
    parser.add_argument("--records", type=int, default=2000, help="records per way of writing")
    args = parser.parse_args(argv)
    if not args.writes_only and not args.model_dir:
        parser.error("--model-dir is needed, unless --writes-only")
    from bench.bench import machine, photo

    if args.writes_only:
        print(f"machine: {machine()}, load {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        with tempfile.TemporaryDirectory(prefix="captioner-bulk-bench-") as work:
            rates = catalogue_write_rate(Path(work), args.database_url, args.records)
        print("\n".join(write_lines(rates)))
        print(f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        return 0
    counts = args.images * len(args.model_dir) if len(args.images) == 1 else args.images
    print(f"machine: {machine()}, load {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for model_dir, images in zip(args.model_dir, counts, strict=True):
        with tempfile.TemporaryDirectory(prefix="captioner-bulk-bench-") as work:
            results = {"bulk": measure(model_dir, Path(work), images, photo, args.database_url)}
        print("\n".join(lines(results)))
        for what, measured, target, passed in verdicts(results):
            print(f"{what}: {measured} (target {target}) {'PASS' if passed else 'FAIL'}")
        print(f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
