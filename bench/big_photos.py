"""The 12 MP line of `make bench`: the service on phone photos against what peers run.

8 HTTP clients upload distinct 4032x3024 JPEGs turned by EXIF (bench/photos.py) to a real
``captioner serve`` (the BLIP-base-sized bench model, 20 new tokens, the default background
compile, measured once compiled), against:
  (a) the bare transformers pipeline given the same files as every peer does: each file opened
      with PIL, the pipeline at batch 8 (decode and preprocessing timed, as they are paid);
  (b) the bare model alone: ``model.generate`` on a batch of 8 ``pixel_values`` prepared
      beforehand (preprocessing not timed);
  (c) one photo alone over HTTP against the pipeline on the same file.
Bare and service runs alternate (bare, service, bare; single pairs one after another), so a
load change on a shared machine hits both sides of each ratio alike.

`make bench` calls ``measure`` and adds ``lines``/``verdicts`` to its report; alone:
``python bench/bench.py --only photos``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 4032, 3024  # a 12 MP phone photo, stored landscape and turned upright by EXIF
ORIENTATION = 6
NEW_TOKENS = 20
BATCH = 8

THROUGHPUT_OVER_PIPELINE_MIN = 1.5
THROUGHPUT_OVER_GENERATE_MIN = 0.95
SINGLE_OVER_PIPELINE_MAX = 0.8


def measure(model_dir: Path, work: Path, rounds: int = 1, singles: int = 3) -> dict[str, Any]:
    """The figures of (a)-(c): ``rounds`` x 16 photos under load, ``singles`` alone."""
    from PIL import Image

    from bench import bench as harness  # here, not at the top: bench.py imports this module
    from bench import photos
    from captioner.adapters.captioners.transformers import GenerationSettings
    from captioner.config import Settings

    load_photos = rounds * 2 * BATCH
    harness.log(f"photos line: making {load_photos + singles} distinct {WIDTH}x{HEIGHT} JPEGs")
    folder = work / "photos-12mp"
    folder.mkdir(parents=True)
    paths = []
    for seed in range(load_photos + singles):
        path = folder / f"photo-{seed}.jpg"
        path.write_bytes(photos.jpeg(photos.picture(WIDTH, HEIGHT, 1000 + seed), ORIENTATION))
        paths.append(path)
    forms = [harness.multipart(path.read_bytes(), path.name) for path in paths]
    megabytes = sum(len(form[0]) for form in forms) / len(forms) / 1e6

    generation = GenerationSettings(max_new_tokens=NEW_TOKENS, num_beams=Settings().num_beams)
    bare = harness.BareModel(model_dir, generation)
    warm = [Image.open(buffer) for buffer in _warm_photos(harness)]
    bare.pipeline(warm[:1])
    bare.pipeline(warm)

    def opened(group: list[Path]) -> list[Any]:
        return [Image.open(path) for path in group]  # what peers hand the pipeline

    pipeline_b8: list[float] = []
    generate_b8: list[float] = []

    def bare_round(group: list[Path]) -> None:
        began = time.perf_counter()
        bare.pipeline(opened(group))
        pipeline_b8.append(time.perf_counter() - began)
        inputs = bare.inputs([image.convert("RGB") for image in opened(group)])
        generate_b8.append(harness.timed(bare.generate_from, inputs))
        harness.log(
            f"photos, bare batch of 8 12 MP: pipeline {pipeline_b8[-1]:.2f} s, "
            f"generate on pixel_values {generate_b8[-1]:.2f} s"
        )

    data_dir = work / "photos-data"
    log_path = work / "photos-server.log"
    # A generous caption timeout: on a shared machine a batch of 8 can take minutes, and a 503
    # would end the measurement rather than measure anything.
    settings = {"CAPTIONER_MAX_NEW_TOKENS": str(NEW_TOKENS), "CAPTIONER_CAPTION_TIMEOUT_S": "900"}
    loads: list[Any] = []
    pipeline_b1: list[float] = []
    service_b1: list[float] = []
    model_b1: list[float] = []  # the records' duration_ms: model time, the rest is the upload path
    with harness.running_server(model_dir, data_dir, log_path, settings=settings) as port:
        ready_s = harness.wait_until_ready(port, log_path)
        compile_s = harness.wait_until_compiled(log_path)
        harness.log(f"photos: server ready after {ready_s:.1f} s, compiled {compile_s} s later")
        warm_forms = [
            harness.multipart(buffer.getvalue(), f"warm-{n}.jpg")
            for n, buffer in enumerate(_warm_photos(harness))
        ]
        harness.concurrent_uploads(port, [[form] for form in warm_forms])

        for round_number in range(rounds):
            first = round_number * 2 * BATCH
            group = list(range(first, first + 2 * BATCH))
            bare_round([paths[n] for n in group[:BATCH]])
            # Each client sends two photos: the second's decode overlaps the first batch.
            work_lists = [[forms[group[c]], forms[group[c + BATCH]]] for c in range(BATCH)]
            loads.append(harness.concurrent_uploads(port, work_lists))
            harness.log(f"photos, service: 16 photos in {loads[-1].seconds:.2f} s")
            bare_round([paths[n] for n in group[BATCH:]])

        client = harness.Client(port)
        for number in range(load_photos, load_photos + singles):
            pipeline_b1.append(harness.timed(bare.pipeline, opened([paths[number]])))
            began = time.perf_counter()
            answer = client.upload(forms[number])
            service_b1.append(time.perf_counter() - began)
            model_b1.append(float(answer.get("duration_ms") or 0.0) / 1000)
            harness.log(
                f"photos, single 12 MP: pipeline {pipeline_b1[-1]:.2f} s, "
                f"service {service_b1[-1]:.2f} s"
            )
        client.close()
    server_log = log_path.read_text(errors="replace")

    images = sum(load.images for load in loads)
    seconds = sum(load.seconds for load in loads)
    gap_s = statistics.median(generate_b8) / BATCH / 3
    return {
        "photo": f"{WIDTH}x{HEIGHT} JPEG q90, EXIF orientation {ORIENTATION}",
        "photo_mb": megabytes,
        "max_new_tokens": NEW_TOKENS,
        "rounds": rounds,
        "server_ready_s": ready_s,
        "compile_s": compile_s,
        "pipeline_batch8_s": pipeline_b8,
        "generate_batch8_s": generate_b8,
        "pipeline_images_per_s": BATCH / statistics.median(pipeline_b8),
        "generate_images_per_s": BATCH / statistics.median(generate_b8),
        "service_images": images,
        "service_seconds": seconds,
        "service_images_per_s": images / seconds,
        "batches_seen": [load.batch_sizes(gap_s) for load in loads],
        "pipeline_single_s_all": pipeline_b1,
        "service_single_s_all": service_b1,
        "service_single_caption_s_all": model_b1,
        "pipeline_single_s": statistics.median(pipeline_b1),
        "service_single_s": statistics.median(service_b1),
        "server_log_tail": [
            line for line in server_log.splitlines()[-40:] if "captioner.access" not in line
        ],
    }


def _warm_photos(harness: Any) -> list[Any]:
    """Eight small JPEGs that warm both sides at batch 8 (their shapes after the processor are
    the 12 MP photos' shapes)."""
    import io

    return [io.BytesIO(harness.photo(90_000 + seed)) for seed in range(BATCH)]


def ratios(results: dict[str, Any]) -> tuple[float, float, float]:
    line = results["photos"]
    service = line["service_images_per_s"]
    return (
        service / line["pipeline_images_per_s"],
        service / line["generate_images_per_s"],
        line["service_single_s"] / line["pipeline_single_s"],
    )


def lines(results: dict[str, Any]) -> list[str]:
    line = results["photos"]
    over_pipeline, over_generate, single = ratios(results)

    def fmt(values: list[float]) -> str:
        return " ".join(f"{value:.2f}" for value in values)

    return [
        f"12 MP photos ({line['photo']}, {line['photo_mb']:.1f} MB each), BLIP-base-sized, "
        f"max_new_tokens={line['max_new_tokens']}, service compiled "
        f"{line['compile_s']} s after ready:",
        f"  8 clients x 2 photos: {line['service_images_per_s']:.3f} img/s; bare pipeline "
        f"given the files, batch 8: {line['pipeline_images_per_s']:.3f} img/s "
        f"({over_pipeline:.3f}x); bare generate on pixel_values, batch 8: "
        f"{line['generate_images_per_s']:.3f} img/s ({over_generate:.3f}x)",
        f"  batch 8 s: pipeline {fmt(line['pipeline_batch8_s'])}; generate "
        f"{fmt(line['generate_batch8_s'])}; service {line['service_images']} photos in "
        f"{line['service_seconds']:.2f} s, batches seen {line['batches_seen']}",
        f"  one photo alone: service over HTTP {fmt(line['service_single_s_all'])} s, bare "
        f"pipeline {fmt(line['pipeline_single_s_all'])} s: medians "
        f"{line['service_single_s']:.2f} / {line['pipeline_single_s']:.2f} s ({single:.3f}x); "
        f"of the service's, the records' duration_ms (model time) "
        f"{fmt(line['service_single_caption_s_all'])} s",
        *(
            f"  {'PASS' if passed else 'FAIL'}  {what:<40} {measured:>10}  (target {target})"
            for what, measured, target, passed in verdicts(results)
        ),
    ]


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    over_pipeline, over_generate, single = ratios(results)
    return [
        (
            "12 MP: 8 clients / bare pipeline batch 8",
            f"{over_pipeline:.3f}x",
            f">= {THROUGHPUT_OVER_PIPELINE_MIN}x",
            over_pipeline >= THROUGHPUT_OVER_PIPELINE_MIN,
        ),
        (
            "12 MP: 8 clients / bare generate batch 8",
            f"{over_generate:.3f}x",
            f">= {THROUGHPUT_OVER_GENERATE_MIN}x",
            over_generate >= THROUGHPUT_OVER_GENERATE_MIN,
        ),
        (
            "12 MP: single over HTTP / bare pipeline",
            f"{single:.3f}x",
            f"<= {SINGLE_OVER_PIPELINE_MAX}x",
            single <= SINGLE_OVER_PIPELINE_MAX,
        ),
    ]
