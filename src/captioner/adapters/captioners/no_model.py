"""The captioner of a server that loads no model (`serve --no-model`): it names the model the
queue's records are kept under, and workers elsewhere caption them."""

from __future__ import annotations

from captioner.domain.errors import CaptionerUnavailable
from captioner.domain.model import Caption, DecodedImage, Provenance, Readiness


class NoModelCaptioner:
    """Implements the Captioner port without a model: ready at once, never describes.

    The service never asks it to describe (it queues instead); a caller that does is told
    that workers caption for this server.
    """

    def __init__(self, model: str) -> None:
        self._model = model

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def provenance(self) -> Provenance:
        return Provenance()  # the workers' captions carry their weights' revision

    def readiness(self) -> Readiness:
        return Readiness(True, "no model in this process: queue workers caption its uploads")

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return self.readiness()

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        raise CaptionerUnavailable(
            "This server runs without a model (no_model): `captioner worker` captions its uploads.",
            retry_after_s=None,
        )
