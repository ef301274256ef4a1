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

from typing import Any

from captioner.config import Settings
from captioner.domain import errors
from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerError,
    CaptionerUnavailable,
    CaptioningFailed,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    UnsupportedImageType,
)
from captioner.domain.model import CheckReport, Description, ImagePage, ImageRecord, ImageUpload
from captioner.domain.service import CaptionService

__all__ = [
    "CaptionService",
    "CaptionerBusy",
    "CaptionerError",
    "CaptionerUnavailable",
    "CaptioningFailed",
    "CheckReport",
    "Description",
    "ImageNotFound",
    "ImagePage",
    "ImageRecord",
    "ImageTooLarge",
    "ImageUpload",
    "InvalidImage",
    "InvalidRequest",
    "Settings",
    "UnsupportedImageType",
    "build_service",
    "errors",
]


def build_service(settings: Settings | None = None, **overrides: Any) -> CaptionService:
    """The same service the server runs, wired from settings.

    ``overrides`` are setting names (``model=``, ``data_dir=``, ``max_batch=``...) and beat
    environment variables, as command-line flags do. The model starts loading in the
    background; ``service.wait_until_ready()`` waits for it.
    """
    from captioner.container import build_container

    if settings is None or overrides:
        base = settings.as_dict() if settings is not None else {}
        settings = Settings.load(overrides={**base, **overrides})
    return build_container(settings).service()
