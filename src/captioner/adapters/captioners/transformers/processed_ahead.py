"""The model's image processing done on the caller's thread: each prepared image carries its
processor output, which the model's own processor call then takes instead of computing it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# What the pipeline (and the encoder-decoder family) pass their image processor; any other
# call (another family's settings) is left to the processor itself.
_PLAIN_CALL = {"return_tensors": "pt"}


@dataclass(frozen=True)
class PreparedImage:
    """A picture at the model's input size, with what the image processor made of it."""

    picture: Any  # PIL, RGB
    processed: Any  # the processor's output for this one picture (a batch of 1)


def picture_of(pixels: object) -> Any:
    """The PIL picture of a prepared image, or the pixels themselves when not prepared."""
    return pixels.picture if isinstance(pixels, PreparedImage) else pixels


class ProcessedAhead:
    """Stands in for a family's image processor (every attribute is the processor's): called
    with pictures it was supplied, it answers their outputs computed ahead, stacked as one
    batch; anything else goes to the processor. The processor works on each image alone and
    stacks them, so the numbers are the very ones it would have computed."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor  # the family's own
        self._local = threading.local()
        self.used = 0  # calls answered from outputs computed ahead (tests read it)
        # Set when the model calls its processor in another way than ``process`` does (other
        # settings, nested lists: PaliGemma's processor): outputs computed ahead would only
        # be computed twice, so callers stop computing them.
        self.declined = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)

    def process(self, picture: Any) -> PreparedImage:
        """The processor's output for one picture; runs on the caller's thread."""
        return PreparedImage(picture, self.processor(images=[picture], **_PLAIN_CALL))

    @contextlib.contextmanager
    def supplying(self, prepared: Sequence[PreparedImage]) -> Iterator[None]:
        """While the model describes these images (on this thread), their outputs are known."""
        self._local.supplied = [(_content(image.picture), image.processed) for image in prepared]
        try:
            yield
        finally:
            self._local.supplied = []

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        supplied = getattr(self._local, "supplied", [])
        found = None
        if supplied:
            if not args and kwargs == _PLAIN_CALL and isinstance(images, list):
                found = _match(images, supplied)
            else:
                self.declined = True
        if found is None:
            return self.processor(images, *args, **kwargs)
        self.used += 1
        import torch

        first = found[0]
        return type(first)({key: torch.cat([part[key] for part in found]) for key in first})


def _content(picture: Any) -> tuple[str, tuple[int, int], bytes]:
    return picture.mode, picture.size, picture.tobytes()


def _match(images: list[Any], supplied: list[tuple[Any, Any]]) -> list[Any] | None:
    """The output supplied for each image (the pipeline hands over copies, so by content), or
    None when one was not supplied."""
    unused = list(supplied)
    found = []
    for image in images:
        if not hasattr(image, "tobytes"):
            return None
        content = _content(image)
        for index, (seen, processed) in enumerate(unused):
            if seen == content:
                found.append(processed)
                del unused[index]
                break
        else:
            return None
    return found
