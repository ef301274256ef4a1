"""Captioners without weights whose captions a test can predict: always ready, instant."""

from __future__ import annotations

from captioner.domain.model import Caption, DecodedImage, Provenance, Readiness
from tests.support.fakes import IMAGE_MAGIC


class ReadyCaptioner:
    """The Captioner port's bookkeeping for a model that is always loaded."""

    model_name = "ready-captioner"
    provenance = Provenance()

    def readiness(self) -> Readiness:
        return Readiness.ok()

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return Readiness.ok()


class CaptionIsInTheImage(ReadyCaptioner):
    """Fake images carry their own caption, so tests choose every word."""

    model_name = "caption-is-in-the-image"

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        assert isinstance(image.pixels, bytes)
        return Caption(image.pixels[len(IMAGE_MAGIC) :].decode(), duration_ms=1.0)


class SizeCaptioner(ReadyCaptioner):
    """Describes a real decoded image by its size: a model without the weights."""

    model_name = "size-captioner"

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        return Caption(f"an image of {image.width}x{image.height}", duration_ms=1.0)
