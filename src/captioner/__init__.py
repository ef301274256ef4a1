"""captioner: describe images with a Hugging Face model, keep them, answer repeats from storage.

Library use::

    from captioner import ImageUpload, Settings, build_service

    service = build_service(model="Salesforce/blip-image-captioning-base", data_dir="data")
    service.wait_until_ready()
    with open("cat.jpg", "rb") as image:
        result = service.describe(ImageUpload(image, original_name="cat.jpg"))
    print(result.record.description, result.duplicate)
    for record in service.list(limit=10).records:
        print(record.id, record.description)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from captioner.config import Settings
from captioner.domain import errors
from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerError,
    CaptionerUnavailable,
    CaptioningFailed,
    CatalogueUnavailable,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    StorageFull,
    StorageUnavailable,
    StoredFileMissing,
    UnsupportedImageType,
)
from captioner.domain.model import (
    PERSON_MODEL,
    Description,
    ImagePage,
    ImageRecord,
    ImageUpload,
    ListedImage,
    ModelCaptions,
)
from captioner.domain.service import CaptionService
from captioner.domain.storage_check import CheckReport

try:  # the one version is pyproject.toml's, as installed
    __version__ = metadata.version("captioner")
except metadata.PackageNotFoundError:  # sources on sys.path that were never installed
    __version__ = "0+unknown"

__all__ = [
    "PERSON_MODEL",
    "CaptionService",
    "CaptionerBusy",
    "CaptionerError",
    "CaptionerUnavailable",
    "CaptioningFailed",
    "CatalogueUnavailable",
    "CheckReport",
    "Description",
    "ImageNotFound",
    "ImagePage",
    "ImageRecord",
    "ImageTooLarge",
    "ImageUpload",
    "InvalidImage",
    "InvalidRequest",
    "ListedImage",
    "ModelCaptions",
    "Settings",
    "StorageFull",
    "StorageUnavailable",
    "StoredFileMissing",
    "UnsupportedImageType",
    "__version__",
    "build_service",
    "errors",
    "open_service",
]


def build_service(settings: Settings | None = None, **overrides: Any) -> CaptionService:
    """The same service the server runs, wired from settings.

    ``overrides`` are setting names (``model=``, ``data_dir=``, ``max_batch=``...) and beat
    environment variables, as command-line flags do. The model starts loading in the
    background; ``service.wait_until_ready()`` waits for it. For a service that is closed
    when you are done with it, use ``open_service``.
    """
    from captioner.container import build_container

    return build_container(_settings(settings, overrides)).service()


@contextlib.contextmanager
def open_service(settings: Settings | None = None, **overrides: Any) -> Iterator[CaptionService]:
    """``build_service`` as a context manager: on exit the model worker finishes what it was
    given and stops, and database connections are closed."""
    from captioner.container import build_container, opened

    with opened(build_container(_settings(settings, overrides))) as container:
        yield container.service()


def _settings(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    if settings is not None and not overrides:
        return settings
    base = settings.as_dict() if settings is not None else {}
    return Settings.load(overrides={**base, **overrides})
