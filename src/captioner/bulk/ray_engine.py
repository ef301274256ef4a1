"""The bulk plan on Ray Data: read and hash in tasks, catalogue lookups in batches, captions
on a pool of model actors (one per GPU, or per N CPUs)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.bulk.plan import (
    OUTPUT_COLUMNS,
    READ_BATCH,
    Batch,
    CaptionBatches,
    ContainerFactory,
    Summary,
    list_sources,
    lookup_batch,
    read_batch,
    shared_seconds,
)
from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.rules import MAX_KNOWN_DIGESTS

if TYPE_CHECKING:
    import ray.data


def caption_dataset(
    images: ray.data.Dataset,
    settings: Settings,
    containers: ContainerFactory = build_container,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
) -> ray.data.Dataset:
    """Caption a Dataset of images (columns ``path`` and ``bytes``, as
    ``ray.data.read_binary_files(..., include_paths=True)`` gives) into the catalogue.

    Returns one row per image: path, sha256, status (known, captioned, failed), caption,
    record_id, error, model, prompt, provenance and each stage's seconds. Lazy, like every
    Dataset: nothing runs until it is consumed.
    """

    def hashed(batch: Batch) -> Batch:
        import hashlib

        started = time.perf_counter()
        contents = [bytes(content) for content in batch["bytes"]]
        return {
            "path": [str(path) for path in batch["path"]],
            "bytes": contents,
            "sha256": [hashlib.sha256(content).hexdigest() for content in contents],
            "error": [""] * len(contents),
            "read_s": shared_seconds(started, len(contents)),
        }

    return plan_on(
        images.map_batches(hashed, batch_format="numpy"),
        settings,
        containers,
        actors,
        gpus_per_actor,
        cpus_per_actor,
    )


def plan_on(
    read: ray.data.Dataset,
    settings: Settings,
    containers: ContainerFactory,
    actors: int,
    gpus_per_actor: float,
    cpus_per_actor: float,
) -> ray.data.Dataset:
    """Look up and caption a Dataset that has been read and hashed (read_batch's columns)."""
    import ray.data

    looked_up = read.map_batches(
        _listify(lookup_batch),
        fn_kwargs={"settings": settings, "containers": containers},
        batch_size=MAX_KNOWN_DIGESTS,
        batch_format="numpy",
        num_cpus=0.25,  # waits on the database, not the CPU
    )
    remote: dict[str, Any] = {"num_gpus": gpus_per_actor} if gpus_per_actor else {}
    return looked_up.map_batches(
        _CaptionActor,
        fn_constructor_kwargs={"settings": settings, "containers": containers},
        batch_size=READ_BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        **remote,
    )


def run(
    sources: Sequence[str],
    settings: Settings,
    containers: ContainerFactory = build_container,
    address: str | None = None,
    parquet: Path | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
) -> Summary:
    """The whole run on Ray: list on the driver, the rest on the cluster; a Ray started
    here is stopped at the end, one already running (a job, a test) is left running."""
    import ray
    import ray.data

    started = time.perf_counter()
    ours = not ray.is_initialized()
    if ours:
        # No dashboard: its start costs seconds a batch job does not need (Ray jobs have one).
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        paths = list_sources(sources, settings, containers)
        summary = Summary()
        if paths:
            listed = ray.data.from_items(
                [{"path": path} for path in paths],
                override_num_blocks=math.ceil(len(paths) / READ_BATCH),
            )
            read = listed.map_batches(
                _listify(read_batch),
                fn_kwargs={"settings": settings, "containers": containers},
                batch_size=READ_BATCH,
                batch_format="numpy",
                num_cpus=0.5,  # mostly waiting on disks and buckets
            )
            done = plan_on(read, settings, containers, actors, gpus_per_actor, cpus_per_actor)
            done = done.materialize()
            for batch in done.iter_batches(batch_format="numpy", batch_size=4096):
                summary.add({name: list(values) for name, values in batch.items()})
            if parquet is not None:
                done.select_columns(list(OUTPUT_COLUMNS)).write_parquet(str(parquet))
    finally:
        if ours:
            ray.shutdown()
    summary.wall_s = time.perf_counter() - started
    return summary


class _CaptionActor:
    """CaptionBatches as a Ray Data callable class, its batches turned into lists."""

    def __init__(self, settings: Settings, containers: ContainerFactory) -> None:
        self._captions = CaptionBatches(settings, containers)

    def __call__(self, batch: dict[str, Any]) -> Batch:
        return self._captions({name: list(values) for name, values in batch.items()})


def _listify(stage: Any) -> Any:
    def listed(batch: dict[str, Any], **kwargs: Any) -> Batch:
        result: Batch = stage({name: list(values) for name, values in batch.items()}, **kwargs)
        return result

    listed.__name__ = stage.__name__
    return listed
