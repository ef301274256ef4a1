"""The recheck line of `make bench`: what closing the cross-replica delete race costs an upload.

After its record commits, an upload looks at its file once more (``keep_file_after_commit``)
and stores the bytes again only if a delete on another replica took them. On the normal path
that is one existence check: a ``stat`` on disk, a ``HEAD`` on S3. This measures, interleaved
in one run, a whole upload of new bytes through ``CaptionService.describe`` (real SQLite,
real Pillow decoding, the real store; a captioner that answers at once, so the model does not
drown the figure) and the re-check alone on the same store, and gives their p50s, the
re-check's share of the upload, and its p50 against the target. The S3 side runs against
moto's server on loopback, which answers faster than a real bucket across a network.

Standalone: ``python bench/recheck.py [--uploads N]``; `make bench` calls ``measure`` and adds
``lines``/``verdicts`` to its report.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the instant captioner, the S3 endpoint

RECHECK_MAX_MS = 1.0  # the p50 the re-check may add to an upload (issue 25)


def measure(work: Path, uploads: int = 300) -> dict[str, Any]:
    """p50s of a new upload and of its re-check, on disk and (where moto is installed) S3."""
    results: dict[str, Any] = {"uploads": uploads}
    with _disk_store(work / "disk") as store:
        results["disk"] = _side_by_side(store, work / "disk", uploads)
    with _s3_store() as store:
        if store is not None:
            results["s3"] = _side_by_side(store, work / "s3", uploads)
    return results


def _side_by_side(store: Any, work: Path, uploads: int) -> dict[str, float]:
    from tests.support.bulk import distinct_png
    from tests.support.captioners import SizeCaptioner

    from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
    from captioner.adapters.imaging.decoder import PillowImageDecoder
    from captioner.domain.model import ImageDigest, ImageUpload
    from captioner.domain.one_run_per_key import keep_file_after_commit
    from captioner.domain.service import CaptionService

    work.mkdir(parents=True, exist_ok=True)
    catalogue = SqliteCaptionRepository(work / "catalogue.sqlite3")
    service = CaptionService(SizeCaptioner(), PillowImageDecoder(), store, catalogue)
    upload_s: list[float] = []
    recheck_s: list[float] = []
    try:
        for number in range(uploads):
            data = distinct_png(number)
            began = time.perf_counter()
            record = service.describe(ImageUpload(io.BytesIO(data), "bench.png", "")).record
            upload_s.append(time.perf_counter() - began)
            # The re-check as the upload just ran it: the file is there, so one look.
            digest = ImageDigest(record.sha256)
            began = time.perf_counter()
            keep_file_after_commit(
                store, record, record.path, digest, functools.partial(io.BytesIO, data), "png"
            )
            recheck_s.append(time.perf_counter() - began)
    finally:
        catalogue.close()
    upload_p50, recheck_p50 = statistics.median(upload_s), statistics.median(recheck_s)
    return {
        "upload_p50_ms": upload_p50 * 1000,
        "recheck_p50_ms": recheck_p50 * 1000,
        "recheck_p99_ms": sorted(recheck_s)[int(0.99 * (len(recheck_s) - 1))] * 1000,
        "recheck_share": recheck_p50 / upload_p50,
    }


@contextmanager
def _disk_store(data_dir: Path) -> Iterator[Any]:
    from captioner.adapters.storage.disk import FilesystemImageStore

    data_dir.mkdir(parents=True, exist_ok=True)
    yield FilesystemImageStore(data_dir)


@contextmanager
def _s3_store() -> Iterator[Any]:
    try:
        from tests.support.s3 import REGION, S3Endpoint
    except ImportError:  # moto is a dev dependency: without it, disk only
        yield None
        return
    from captioner.adapters.storage.s3 import S3ImageStore, make_s3_client

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log: a line a call
    endpoint = S3Endpoint()
    endpoint.start()
    saved = dict(os.environ)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint.url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION=REGION,
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
    )
    client = make_s3_client()
    try:
        client.create_bucket(Bucket="bench")
        yield S3ImageStore(client, "s3://bench/captioner")
    finally:
        client.close()
        os.environ.clear()
        os.environ.update(saved)
        endpoint.stop()


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, passed): the re-check's p50 on each store measured."""
    recheck = results["recheck"]
    return [
        (
            f"delete-race re-check p50 ({store})",
            f"{recheck[store]['recheck_p50_ms']:.3f} ms",
            f"<= {RECHECK_MAX_MS:g} ms",
            recheck[store]["recheck_p50_ms"] <= RECHECK_MAX_MS,
        )
        for store in ("disk", "s3")
        if store in recheck
    ]


def lines(results: dict[str, Any]) -> list[str]:
    recheck = results["recheck"]
    shown = [f"delete-race re-check on the upload path, {recheck['uploads']} new uploads a store:"]
    for store, label in (("disk", "disk"), ("s3", "S3 (moto on loopback)")):
        if store in recheck:
            side = recheck[store]
            shown.append(
                f"  {label}: upload p50 {side['upload_p50_ms']:.2f} ms, re-check p50 "
                f"{side['recheck_p50_ms']:.3f} ms (p99 {side['recheck_p99_ms']:.3f} ms), "
                f"{side['recheck_share']:.1%} of the upload"
            )
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uploads", type=int, default=300, help="new uploads a store (300)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="captioner-recheck-") as work:
        results = {"recheck": measure(Path(work), args.uploads)}
    print("\n".join(lines(results)))
    checks: list[tuple[str, str, str, bool]] = verdicts(results)
    for what, measured, target, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {what}: {measured} (target {target})")
    return 0 if all(passed for *_, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
