"""The composition root: the only place that names concrete adapters and wires them to settings."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from captioner.adapters.captioners.batching import BatchCaptioner, BatchingCaptioner
from captioner.adapters.captioners.no_model import NoModelCaptioner
from captioner.adapters.captioners.openai_compatible import MODEL_PREFIX, OpenAICompatibleCaptioner
from captioner.adapters.captioners.transformers import GenerationSettings, TransformersCaptioner
from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.adapters.catalogue.sqlite_backups import SqliteCatalogueBackups
from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.adapters.imaging.thumbnails import render_thumbnail
from captioner.adapters.prometheus import PrometheusMetrics
from captioner.adapters.rate_limits import MemoryRateLimiter
from captioner.adapters.storage.disk import FilesystemImageStore
from captioner.adapters.storage.disk_thumbnails import DiskThumbnailStore
from captioner.adapters.storage.s3 import S3ImageStore, S3ThumbnailStore, make_s3_client
from captioner.config import Settings
from captioner.domain.access import AccessService, AuthMode
from captioner.domain.caption_queue import QueuePolicy
from captioner.domain.ports import (
    CaptionRepository,
    CatalogueBackups,
    CatalogueTables,
    KeyRing,
    RecentHits,
)
from captioner.domain.service import CaptionService
from captioner.domain.throttle import Rate, Throttle

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from captioner.adapters.catalogue.postgres import PostgresCaptionRepository

# Things that must be closed are Resources: ``container.shutdown_resources()`` runs the rest
# of each generator below, for those that were opened, in the server, the CLI and the library.


def batching_captioner(
    metrics: PrometheusMetrics, inner: BatchCaptioner, **options: Any
) -> Iterator[BatchingCaptioner]:
    """The batcher, its queue depth a gauge; on shutdown its worker finishes queued work,
    then the model's own threads (a load or compile under way) are waited out."""
    captioner = BatchingCaptioner(inner=inner, **options)
    metrics.watch_queue(lambda: captioner.queue_depth)
    yield captioner
    captioner.close()
    if isinstance(inner, TransformersCaptioner):
        inner.close()


def catalogue(settings: Settings) -> Iterator[CaptionRepository]:
    """The catalogue: PostgreSQL when ``database_url`` names one (replicas share it), else
    SQLite in the data dir; on shutdown its connections (pool, listener) are closed."""
    repository: SqliteCaptionRepository | PostgresCaptionRepository
    if settings.database_url:
        # Imported here: a SQLite install never loads psycopg.
        from captioner.adapters.catalogue.postgres import PostgresCaptionRepository

        # A connection for every HTTP thread, plus the claim lease keepers, the check, and
        # the queue worker's round, lease keeper and heartbeat.
        repository = PostgresCaptionRepository(
            settings.database_url, max_connections=settings.threads + 8
        )
    else:
        repository = SqliteCaptionRepository(settings.database_path)
    yield repository
    repository.close()


def catalogue_backups_for(settings: Settings) -> CatalogueBackups:
    """Copies of the catalogue in effect: pg_dump and pg_restore for PostgreSQL, SQLite's
    online backup API for the file in the data dir."""
    if settings.database_url:
        from captioner.adapters.catalogue.postgres_backups import PostgresCatalogueBackups

        return PostgresCatalogueBackups(settings.database_url)
    return SqliteCatalogueBackups(settings.database_path)


def openai_captioner(**options: Any) -> Iterator[OpenAICompatibleCaptioner]:
    """The client of an OpenAI-compatible server; on shutdown its connections are closed."""
    captioner = OpenAICompatibleCaptioner(**options)
    yield captioner
    captioner.close()


def s3_client(timeout_s: float) -> Iterator[S3Client]:
    """One S3 client (a connection pool); on shutdown its connections are closed."""
    client = make_s3_client(timeout_s=timeout_s)
    yield client
    client.close()


def model_runs_where(model: str, no_model: bool = False) -> str:
    """``openai`` for ``openai:<served model name>`` (a remote server), ``none`` when this
    process loads no model (queue workers caption), else ``in_process``."""
    if no_model:
        return "none"
    return "openai" if model.startswith(MODEL_PREFIX) else "in_process"


def edge_wanted_by(captioner: object) -> Callable[[], int | None]:
    """Where the decoder asks how big the model wants its images (the in-process model says
    once it has loaded, an openai: server gets ``openai_max_side``); every pixel for a
    captioner that does not say (no model here, or a test's fake)."""
    wanted = getattr(captioner, "wanted_edge", None)
    return wanted if callable(wanted) else _every_pixel


def _every_pixel() -> int | None:
    return None


def captions_here(no_model: bool) -> bool:
    return not no_model


def keys_of(catalogue: KeyRing) -> KeyRing:
    """The catalogue keeps the API keys too: one database, shared by every replica."""
    return catalogue


def tables_of(catalogue: CatalogueTables) -> CatalogueTables:
    """Every catalogue also reads and writes its tables as plain rows (for `db copy`)."""
    return catalogue


def hits_of(catalogue: RecentHits) -> RecentHits:
    """The catalogue counts wrong keys too: every replica over it counts together."""
    return catalogue


class Container(containers.DeclarativeContainer):
    """Settings -> adapters -> service. Tests override providers with fakes."""

    settings = providers.ThreadSafeSingleton(Settings.load)
    # One registry per container: tests build many apps, each with its own counters.
    metrics = providers.ThreadSafeSingleton(PrometheusMetrics)

    generation = providers.Factory(
        GenerationSettings,
        max_new_tokens=settings.provided.max_new_tokens,
        num_beams=settings.provided.num_beams,
        repetition_penalty=settings.provided.repetition_penalty,
        no_repeat_ngram_size=settings.provided.no_repeat_ngram_size,
    )
    model = providers.ThreadSafeSingleton(
        TransformersCaptioner,
        model=settings.provided.model,
        device=settings.provided.device,
        half_precision=settings.provided.half_precision,
        generation=generation,
        instruction=settings.provided.instruction,
        torch_threads=settings.provided.torch_threads,
        warm_up=settings.provided.warm_up,
        compile=settings.provided.compile,
        compile_cache_dir=settings.provided.compile_cache_dir,
        on_loaded=metrics.provided.observe_model_load,
    )
    # One setting switches: a hub id or directory runs in process behind the batcher; an
    # openai: model goes to a server that batches itself, so requests go out concurrently.
    captioner = providers.Selector(
        providers.Callable(model_runs_where, settings.provided.model, settings.provided.no_model),
        none=providers.ThreadSafeSingleton(NoModelCaptioner, model=settings.provided.model),
        in_process=providers.Resource(
            batching_captioner,
            metrics=metrics,
            inner=model,
            max_batch=settings.provided.max_batch,
            max_wait_ms=settings.provided.max_wait_ms,
            fill_wait_ms=settings.provided.fill_wait_ms,
            max_queue=settings.provided.max_queue,
            timeout_s=settings.provided.caption_timeout_s,
            on_batch=metrics.provided.observe_batch,
        ),
        openai=providers.Resource(
            openai_captioner,
            model=settings.provided.model,
            base_urls=settings.provided.openai_base_url,
            api_key=settings.provided.openai_api_key,
            instruction=settings.provided.instruction,
            max_tokens=settings.provided.max_new_tokens,
            max_side=settings.provided.openai_max_side,
            concurrency=settings.provided.openai_concurrency,
            timeout_s=settings.provided.openai_timeout_s,
            retries=settings.provided.openai_retries,
            queue_timeout_s=settings.provided.caption_timeout_s,
        ),
    )
    # Decoded at the size the model needs, not every pixel of a 48 MP photo.
    image_decoder = providers.ThreadSafeSingleton(
        PillowImageDecoder,
        max_pixels=settings.provided.max_pixels,
        min_edge=providers.Callable(edge_wanted_by, captioner),
    )
    # One client for both S3 stores; boto3 clients are thread-safe. Built only for s3:// URLs.
    s3_client = providers.Resource(s3_client, timeout_s=settings.provided.store_timeout_s)
    image_store = providers.Selector(
        settings.provided.store_kind,
        filesystem=providers.ThreadSafeSingleton(
            FilesystemImageStore,
            data_dir=settings.provided.data_dir,
            min_free_mb=settings.provided.min_free_mb,
        ),
        s3=providers.ThreadSafeSingleton(
            S3ImageStore,
            client=s3_client,
            url=settings.provided.store_url,
            link_expiry_s=settings.provided.store_redirect_s,
        ),
    )
    file_links = providers.Selector(
        settings.provided.file_links_kind, none=providers.Object(None), s3=image_store
    )
    render_thumbnail = providers.Factory(
        functools.partial, render_thumbnail, max_pixels=settings.provided.max_pixels
    )
    thumbnails = providers.Selector(
        settings.provided.store_kind,
        filesystem=providers.ThreadSafeSingleton(
            DiskThumbnailStore, data_dir=settings.provided.data_dir, render=render_thumbnail
        ),
        s3=providers.ThreadSafeSingleton(
            S3ThumbnailStore,
            client=s3_client,
            url=settings.provided.store_url,
            render=render_thumbnail,
        ),
    )
    repository = providers.Resource(catalogue, settings=settings)
    catalogue_backups = providers.Factory(catalogue_backups_for, settings=settings)
    queue_policy = providers.ThreadSafeSingleton(
        QueuePolicy,
        max_attempts=settings.provided.max_attempts,
        retry_backoff_s=settings.provided.retry_backoff_s,
        batch=settings.provided.queue_batch,
        poll_s=settings.provided.queue_poll_s,
        heartbeat_s=settings.provided.worker_heartbeat_s,
        stuck_s=settings.provided.queue_stuck_s,
    )
    service = providers.ThreadSafeSingleton(
        CaptionService,
        # The service reports captions and duplicates, so HTTP, CLI and library are counted.
        observer=metrics,
        captioner=captioner,
        decoder=image_decoder,
        store=image_store,
        repository=repository,
        max_upload_bytes=settings.provided.max_upload_bytes,
        default_prompt=settings.provided.prompt,
        thumbnails=thumbnails,
        claim_lease_s=settings.provided.claim_lease_s,
        # A replica waiting for another's caption waits as long as for its own model.
        claim_wait_s=settings.provided.caption_timeout_s,
        file_links=file_links,
        # The catalogue keeps the caption queue too, so every replica and worker shares it.
        queue=repository,
        captions_here=providers.Callable(captions_here, settings.provided.no_model),
        queue_policy=queue_policy,
    )
    key_ring = providers.Callable(keys_of, repository)
    tables = providers.Callable(tables_of, repository)
    access = providers.ThreadSafeSingleton(
        AccessService,
        key_ring=key_ring,
        mode=providers.Callable(AuthMode, settings.provided.auth),
        beyond_loopback=settings.provided.listens_beyond_loopback,
    )
    failed_keys = providers.ThreadSafeSingleton(
        Throttle,
        hits=providers.Callable(hits_of, repository),
        counter="wrong_keys",
        rate=providers.Callable(Rate.parse, settings.provided.auth_failure_rate),
    )
    # Uploads are counted in each process's memory: they come from keys already accepted
    # (a fairness cap, not a guard against guessing), and a catalogue write per upload would
    # cost every upload a round trip.
    uploads_per_key = providers.ThreadSafeSingleton(
        MemoryRateLimiter, rate=settings.provided.upload_rate
    )


def build_container(settings: Settings | None = None, load_model: bool = True) -> Container:
    """A container for these settings (or ones read from the environment).

    ``load_model=False`` builds the model lazily, on first use: for commands that list,
    delete or check and never caption, so they do not spend seconds loading it.
    """
    container = Container()
    if settings is not None:
        container.settings.override(providers.Object(settings))
    if not load_model:
        container.model.add_kwargs(load_now=False)
    return container


@contextlib.contextmanager
def opened(container: Container) -> Iterator[Container]:
    """``container`` for one run; whatever it opened (model worker, database, clients) is
    closed on exit.

    Resources open on first use, not up front: ``init_resources()`` would open every
    Resource, including the branch of a Selector that these settings do not choose (the
    in-process batcher for an ``openai:`` model).
    """
    try:
        yield container
    finally:
        container.shutdown_resources()
