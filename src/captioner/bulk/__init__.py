"""Bulk captioning: a folder tree, a bucket or the catalogue itself, once per distinct image,
against the same catalogue and claims as the API; on Ray Data or in one process.

Library use::

    from captioner import Settings
    from captioner.bulk import run_bulk

    summary = run_bulk("photos/", Settings.load(), engine="ray")
    print(summary.captioned, summary.known, summary.failed)

Over a Ray Dataset of your own: ``captioner.bulk.ray_engine.caption_dataset``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path

from captioner.bulk.plan import (
    OUTPUT_COLUMNS,
    READ_BATCH,
    Batch,
    CaptionBatches,
    ContainerFactory,
    Summary,
    batches,
    list_sources,
    lookup_batch,
    output_rows,
    read_batch,
)
from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.rules import MAX_KNOWN_DIGESTS

ENGINES = ("ray", "local")
RAY_MISSING = (
    "the ray engine needs Ray: pip install 'captioner[ray]' (or use --engine local, the same "
    "plan in one process)"
)

__all__ = ["ENGINES", "RAY_MISSING", "Summary", "ray_installed", "run_bulk", "run_local"]


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def run_bulk(
    sources: str | Sequence[str],
    settings: Settings,
    engine: str = "ray",
    containers: ContainerFactory = build_container,
    ray_address: str | None = None,
    parquet: Path | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
) -> Summary:
    """Caption every image of ``sources`` the catalogue does not know for the settings' model
    and prompt; known bytes are answered from one lookup per batch, never decoded.

    Each source: a folder (walked), ``s3://bucket/prefix``, or ``catalogue:`` (stored images,
    e.g. to re-caption them with another model). Raises RuntimeError (RAY_MISSING) for
    ``engine="ray"`` without Ray installed.
    """
    if isinstance(sources, str):
        sources = [sources]
    if engine == "local":
        return run_local(sources, settings, containers, parquet)
    if engine != "ray":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not ray_installed():
        raise RuntimeError(RAY_MISSING)
    from captioner.bulk import ray_engine

    return ray_engine.run(
        sources, settings, containers, ray_address, parquet, actors, gpus_per_actor, cpus_per_actor
    )


def run_local(
    sources: Sequence[str],
    settings: Settings,
    containers: ContainerFactory = build_container,
    parquet: Path | None = None,
) -> Summary:
    """The same plan in this process: batches read, looked up and captioned in turn."""
    started = time.perf_counter()
    paths = list_sources(sources, settings, containers)
    summary = Summary()
    written: list[Batch] = []
    if paths:
        model = CaptionBatches(settings, containers)
        for batch in batches(paths, MAX_KNOWN_DIGESTS):
            looked_up = lookup_batch(read_batch(batch, settings, containers), settings, containers)
            for part in _split(looked_up, READ_BATCH):
                done = model(part)
                summary.add(done)
                if parquet is not None:
                    written.append(output_rows(done))
    if parquet is not None:
        _write_parquet(parquet, written)
    summary.wall_s = time.perf_counter() - started
    return summary


def _split(batch: Batch, size: int) -> list[Batch]:
    count = len(batch["path"])
    return [
        {name: list(values[start : start + size]) for name, values in batch.items()}
        for start in range(0, count, size)
    ]


def _write_parquet(directory: Path, parts: list[Batch]) -> None:
    """One file, as Ray's writer makes one per block: a folder of Parquet files either way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    columns = {name: [value for part in parts for value in part[name]] for name in OUTPUT_COLUMNS}
    pq.write_table(pa.table(columns), directory / "captions.parquet")
