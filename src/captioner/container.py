"""The composition root: the only place that names concrete adapters and wires them to settings."""

from __future__ import annotations

import functools

from dependency_injector import containers, providers

from captioner.adapters.batching import BatchingCaptioner
from captioner.adapters.filesystem import FilesystemImageStore
from captioner.adapters.huggingface import GenerationSettings, TransformersCaptioner
from captioner.adapters.pillow import PillowImageDecoder
from captioner.adapters.prometheus import PrometheusMetrics
from captioner.adapters.rate_limits import MemoryRateLimiter
from captioner.adapters.s3 import S3ImageStore, S3ThumbnailStore, make_s3_client
from captioner.adapters.sqlite import SqliteCaptionRepository
from captioner.adapters.thumbnails import PillowThumbnailStore, render_thumbnail
from captioner.config import Settings
from captioner.domain.access import AccessService
from captioner.domain.model import AuthMode
from captioner.domain.ports import KeyRing
from captioner.domain.service import CaptionService


def watch_queue_depth(
    captioner: BatchingCaptioner, metrics: PrometheusMetrics
) -> BatchingCaptioner:
    """Report ``captioner``'s queue depth as a gauge whenever ``metrics`` are scraped."""
    metrics.watch_queue(lambda: captioner.queue_depth)
    return captioner


def keys_of(catalogue: KeyRing) -> KeyRing:
    """The catalogue keeps the API keys too: one database, shared by every replica."""
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
    )
    model = providers.ThreadSafeSingleton(
        TransformersCaptioner,
        model=settings.provided.model,
        device=settings.provided.device,
        half_precision=settings.provided.half_precision,
        generation=generation,
        torch_threads=settings.provided.torch_threads,
        warm_up=settings.provided.warm_up,
        on_loaded=metrics.provided.observe_model_load,
    )
    captioner = providers.ThreadSafeSingleton(
        watch_queue_depth,
        captioner=providers.Factory(
            BatchingCaptioner,
            inner=model,
            max_batch=settings.provided.max_batch,
            max_wait_ms=settings.provided.max_wait_ms,
            fill_wait_ms=settings.provided.fill_wait_ms,
            max_queue=settings.provided.max_queue,
            timeout_s=settings.provided.caption_timeout_s,
            on_batch=metrics.provided.observe_batch,
        ),
        metrics=metrics,
    )
    image_decoder = providers.ThreadSafeSingleton(
        PillowImageDecoder, max_pixels=settings.provided.max_pixels
    )
    # One client for both S3 stores; boto3 clients are thread-safe. Built only for s3:// URLs.
    s3_client = providers.ThreadSafeSingleton(
        make_s3_client, timeout_s=settings.provided.store_timeout_s
    )
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
    thumbnails = providers.Selector(
        settings.provided.store_kind,
        filesystem=providers.ThreadSafeSingleton(
            PillowThumbnailStore,
            data_dir=settings.provided.data_dir,
            max_pixels=settings.provided.max_pixels,
        ),
        s3=providers.ThreadSafeSingleton(
            S3ThumbnailStore,
            client=s3_client,
            url=settings.provided.store_url,
            render=providers.Factory(
                functools.partial, render_thumbnail, max_pixels=settings.provided.max_pixels
            ),
        ),
    )
    repository = providers.ThreadSafeSingleton(
        SqliteCaptionRepository, database=settings.provided.database_path
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
        file_links=file_links,
    )
    key_ring = providers.Callable(keys_of, repository)
    access = providers.ThreadSafeSingleton(
        AccessService,
        key_ring=key_ring,
        mode=providers.Callable(AuthMode, settings.provided.auth),
        beyond_loopback=settings.provided.listens_beyond_loopback,
    )
    failed_keys = providers.ThreadSafeSingleton(
        MemoryRateLimiter, rate=settings.provided.auth_failure_rate
    )
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


def close_container(container: Container) -> None:
    """Stop the model worker after its queued work and close database connections.

    For a container whose service was built (so these singletons exist already).
    """
    for part in (container.captioner(), container.repository()):
        close = getattr(part, "close", None)
        if callable(close):
            close()
