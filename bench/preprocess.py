"""Where one big photo's time goes, and what the model's thread still does besides the model.

One run prints, on this machine:
  (a) per-stage time of one upload (read, hash, decode, preprocess, model, write, insert) for
      each photo of the corpus (bench/photos.py: 12 and 48 MP JPEG turned by EXIF, 12 MP HEIC,
      AVIF, a PNG screenshot), decoded in full (before) and at the model's size (after);
  (b) the model thread's time for a batch of 8 prepared 12 MP photos with a near-free model:
      the image processor on the model's thread (before) against on the callers' (after);
  (c) the GIL: decode and preprocess of 12 MP JPEGs on 1 thread against 2 threads (the best
      of interleaved rounds, so that other load on a shared machine counts least);
  (d) the first view of each photo's thumbnail: rendered from the stored original and kept
      (``--only-thumbnails`` runs this alone; with ``PYTHONPATH`` at an older ``src`` it
      measures that code, for a before/after).
The model is a random-weight BLIP with BLIP-base's 384 px input and a tiny network (the
model's own time is bench.py's business); medians of ``--repeat`` runs. Ratios, not targets.

    PYTHONPATH=src HF_HUB_OFFLINE=1 python bench/preprocess.py
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import photos  # noqa: E402

STAGES = ("read", "hash", "decode", "preprocess", "model", "write", "insert")


def median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def stages(
    photo: photos.Photo, decoder: Any, captioner: Any, work: Path, repeat: int, label: str
) -> dict[str, float]:
    """Each stage of one upload of ``photo``, timed alone (ms)."""
    from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
    from captioner.adapters.storage.disk import FilesystemImageStore
    from captioner.domain.model import ImageDigest, NewImageRecord

    source = work / photo.name
    source.write_bytes(photo.data)
    data = source.read_bytes()
    decoded = decoder.decode(io.BytesIO(data))
    prepared = captioner.prepare(decoded)
    digest = ImageDigest.of_stream(io.BytesIO(data))
    times = {
        "read": median_ms(source.read_bytes, repeat),
        "hash": median_ms(lambda: ImageDigest.of_stream(io.BytesIO(data)), repeat),
        "decode": median_ms(lambda: decoder.decode(io.BytesIO(data)), repeat),
        "preprocess": median_ms(lambda: captioner.prepare(decoded), repeat),
        "model": median_ms(lambda: captioner.describe_batch([(prepared, "")]), repeat),
    }
    write_times, insert_times = [], []
    for attempt in range(repeat):
        store = FilesystemImageStore(work / f"store-{label}-{photo.name}-{attempt}", min_free_mb=0)
        began = time.perf_counter()
        path = store.save(digest, io.BytesIO(data), decoded.extension)
        write_times.append(time.perf_counter() - began)
        repository = SqliteCaptionRepository(work / f"db-{label}-{photo.name}-{attempt}.sqlite3")
        record = NewImageRecord(
            sha256=hashlib.sha256(f"{photo.name}{attempt}".encode()).hexdigest(),
            path=path,
            description="a caption",
            model="bench",
            prompt="",
            width=decoded.width,
            height=decoded.height,
            content_type=decoded.content_type,
            original_name=photo.name,
        )
        began = time.perf_counter()
        repository.add(record)
        insert_times.append(time.perf_counter() - began)
        repository.close()
    times["write"] = statistics.median(write_times) * 1000
    times["insert"] = statistics.median(insert_times) * 1000
    return times


def model_thread_ms(captioner: Any, images: list[Any], repeat: int) -> float:
    """What the batcher's worker runs for one batch: begin on each image, then the batch."""

    def batch() -> None:
        for image in images:
            captioner.begin(image, "")
        captioner.describe_batch([(image, "") for image in images])

    return median_ms(batch, repeat)


def threads_per_s(work: Callable[[], object], count: int, threads: int) -> float:
    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: work(), range(count)))
    return count / (time.perf_counter() - began)


def first_view_ms(photo: photos.Photo, work: Path, repeat: int) -> list[float]:
    """The first request for ``photo``'s thumbnail, ``repeat`` times (ms): render from the
    stored file, then keep it."""
    from captioner.adapters.imaging.thumbnails import render_thumbnail
    from captioner.adapters.storage.disk_thumbnails import DiskThumbnailStore
    from captioner.domain.model import ImageDigest

    source = work / f"original-{photo.name}"
    source.write_bytes(photo.data)
    digest = ImageDigest.of_bytes(photo.data)
    times = []
    for attempt in range(repeat):
        store = DiskThumbnailStore(work / f"thumbnails-{photo.name}-{attempt}", render_thumbnail)
        began = time.perf_counter()
        store.open_or_make(digest, lambda: source.open("rb")).content.close()
        times.append((time.perf_counter() - began) * 1000)
    return times


def thumbnails(corpus: list[photos.Photo], work: Path, repeat: int) -> None:
    print(f"\n(d) first view of a thumbnail (render + keep, ms, of {repeat} runs)")
    for photo in corpus:
        times = first_view_ms(photo, work, repeat)
        print(f"{photo.name:<15} median {statistics.median(times):>6.0f}, best {min(times):>6.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--gil-images", type=int, default=12, help="images per thread count")
    parser.add_argument("--only-threads", action="store_true", help="(b) and (c) only")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (c) (default 3)")
    parser.add_argument("--only-thumbnails", action="store_true", help="(d) only")
    args = parser.parse_args(argv)
    if args.only_thumbnails:
        scratch = Path(tempfile.mkdtemp(prefix="captioner-thumbnails-"))
        atexit.register(shutil.rmtree, scratch, True)
        thumbnails(photos.corpus(), scratch, args.repeat)
        return 0

    from tests.support.models import build_blip

    from captioner.adapters.captioners.transformers import GenerationSettings, TransformersCaptioner
    from captioner.adapters.captioners.transformers.processed_ahead import picture_of
    from captioner.adapters.imaging.decoder import PillowImageDecoder

    work = Path(tempfile.mkdtemp(prefix="captioner-preprocess-"))
    atexit.register(shutil.rmtree, work, True)  # its photos and model take hundreds of MB
    model_dir = build_blip(work / "blip-384", image_size=384)
    captioner = TransformersCaptioner(
        str(model_dir), generation=GenerationSettings(max_new_tokens=8), device="cpu"
    )
    assert captioner.wait_until_ready(120).ready
    edge = captioner.wanted_edge()
    full, reduced = PillowImageDecoder(), PillowImageDecoder(min_edge=edge)
    print(f"model input 384 px; decoded at a short edge of at least {edge} px")

    print(f"\n(a) one upload, per stage (ms, median of {args.repeat})")
    print(f"{'photo':<15} {'decoded':<8} " + " ".join(f"{s:>10}" for s in STAGES) + f"{'sum':>8}")
    corpus = [] if args.only_threads else photos.corpus()
    for photo in corpus:
        for label, decoder in (("full", full), ("model", reduced)):
            times = stages(photo, decoder, captioner, work, args.repeat, label)
            cells = " ".join(f"{times[s]:>10.1f}" for s in STAGES)
            print(f"{photo.name:<15} {label:<8} {cells}{sum(times.values()):>8.0f}")

    print("\n(b) the model thread, one batch of 8 prepared 12 MP JPEGs (ms)")
    data = [photos.jpeg(photos.picture(4032, 3024, 40 + n)) for n in range(8)]
    prepared = [captioner.prepare(reduced.decode(io.BytesIO(d))) for d in data]
    resized_only = [replace(p, pixels=picture_of(p.pixels)) for p in prepared]
    before = model_thread_ms(captioner, resized_only, args.repeat)
    after = model_thread_ms(captioner, prepared, args.repeat)
    same = captioner.describe_batch([(p, "") for p in prepared]) == captioner.describe_batch(
        [(p, "") for p in resized_only]
    )
    print(
        f"processor on the model thread {before:.0f}, on the callers' {after:.0f}: "
        f"{before / after:.2f}x less model-thread time; captions identical: {same}"
    )

    print(f"\n(c) 12 MP JPEGs per second by threads, best of {args.rounds} interleaved rounds")
    jpeg = data[0]
    decoded_full = full.decode(io.BytesIO(jpeg))
    decoded_small = reduced.decode(io.BytesIO(jpeg))
    works: dict[str, Callable[[], object]] = {
        "full decode": lambda: full.decode(io.BytesIO(jpeg)),
        "model-size decode": lambda: reduced.decode(io.BytesIO(jpeg)),
        "preprocess (full)": lambda: captioner.prepare(decoded_full),
        "preprocess (model)": lambda: captioner.prepare(decoded_small),
    }
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for name, run in works.items():
            for count in (1, 2):
                rate = threads_per_s(run, args.gil_images, count)
                best[name, count] = max(best.get((name, count), 0.0), rate)
    for name in works:
        one, two = best[name, 1], best[name, 2]
        print(f"{name:<20} 1 thread {one:6.2f}/s, 2 threads {two:6.2f}/s: {two / one:.2f}x")

    thumbnails(corpus, work, args.repeat)
    captioner.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
