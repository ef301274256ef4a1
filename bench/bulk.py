"""The bulk line of `make bench`: images/s of `captioner bulk --engine ray`, `--engine local`
and `captioner caption` on the same images and model (each a fresh catalogue, one run, model
load included), and the catalogue's write rate on PostgreSQL (records/s through describe's
claims with an instant captioner), which says how many model actors one database serves.

Standalone: ``python bench/bulk.py --model-dir DIR --images N``; `make bench` calls
``measure`` and adds ``lines``/``verdicts`` to its report.
"""

from __future__ import annotations

import argparse
import io
import os
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
    results: dict[str, Any] = {"images": images}
    for name, command in ways.items():
        seconds = _timed_command(command, model_dir, work / f"data-{name}")
        results[f"{name}_images_per_s"] = images / seconds
        results[f"{name}_s"] = seconds
    results["ray_over_local"] = results["ray_images_per_s"] / results["local_images_per_s"]
    results.update(catalogue_write_rate(work / "writes", database_url))
    return results


def catalogue_write_rate(work: Path, database_url: str, records: int = 2000) -> dict[str, Any]:
    """Records/s that ``WRITERS`` threads store through describe (claim, file, row) when the
    model costs nothing: the ceiling of one catalogue under any number of actors."""
    from tests.support import postgres

    server = None
    if not database_url:
        if not postgres.available():
            return {"write_records_per_s": None, "write_note": postgres.INSTALL_HINT}
        server = postgres.PostgresServer()
        server.start()
        database_url = server.url(server.create_database())
    try:
        return {"write_records_per_s": _writes(work, database_url, records), "write_note": ""}
    finally:
        if server is not None:
            server.remove()


def _writes(work: Path, database_url: str, records: int) -> float:
    from dependency_injector import providers
    from tests.support.bulk import distinct_png
    from tests.support.captioners import SizeCaptioner

    from captioner.config import Settings
    from captioner.container import build_container, opened
    from captioner.domain.model import ImageUpload

    settings = Settings(data_dir=work, database_url=database_url, threads=WRITERS)
    container = build_container(settings)
    container.captioner.override(providers.Object(SizeCaptioner()))
    uploads = [distinct_png(number) for number in range(records)]
    with opened(container):
        service = container.service()
        service.describe(ImageUpload(io.BytesIO(distinct_png(records)), "warm.png"))
        started = time.perf_counter()
        threads = [
            threading.Thread(
                target=lambda part=part: [
                    service.describe(ImageUpload(io.BytesIO(content), "x.png"))
                    for content in uploads[part::WRITERS]
                ]
            )
            for part in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return records / (time.perf_counter() - started)


def lines(results: dict[str, Any]) -> list[str]:
    bulk = results["bulk"]
    rate = bulk["write_records_per_s"]
    local = bulk["local_images_per_s"]
    served = f", enough for ~{rate / local:.0f} actors at this machine's rate" if rate else ""
    return [
        f"bulk, {bulk['images']} images, model load included: ray {bulk['ray_images_per_s']:.2f}"
        f" images/s, local {local:.2f}, caption {bulk['caption_images_per_s']:.2f}"
        f" (ray/local {bulk['ray_over_local']:.2f}x)",
        f"catalogue writes on PostgreSQL ({WRITERS} writers, instant model): "
        + (f"{rate:.0f} records/s{served}" if rate else bulk["write_note"]),
    ]


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    ratio = results["bulk"]["ray_over_local"]
    return [
        (
            "bulk ray / local images/s",
            f"{ratio:.3f}x",
            f">= {RAY_MIN_RATIO}x",
            ratio >= RAY_MIN_RATIO,
        )
    ]


def _timed_command(command: Sequence[str], model_dir: Path, data_dir: Path) -> float:
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
    subprocess.run(
        [sys.executable, "-m", "captioner.entrypoints.cli", *command],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=3600,
    )
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--database-url", default=os.environ.get("CAPTIONER_DATABASE_URL", ""))
    args = parser.parse_args(argv)
    from bench.bench import photo

    with tempfile.TemporaryDirectory(prefix="captioner-bulk-bench-") as work:
        results = {
            "bulk": measure(args.model_dir, Path(work), args.images, photo, args.database_url)
        }
    print("\n".join(lines(results)))
    for what, measured, target, passed in verdicts(results):
        print(f"{what}: {measured} (target {target}) {'PASS' if passed else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
