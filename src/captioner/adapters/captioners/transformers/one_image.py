"""Image encoders run one image of a batch at a time, eagerly, with outputs computed ahead;
in every compile mode (the compile switch wraps the same per-image call)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

ONE_IMAGE_OF = "_captioner_one_image_of"  # on such a wrapper: the forward it runs per image


def run_one_image_at_a_time(module: Any) -> EncodedAhead:
    """From now on ``module`` (an image encoder) runs each image of a batch alone, eagerly,
    or takes its output from what was encoded ahead (returned: where to encode ahead)."""
    eager = module.forward
    ahead = EncodedAhead(eager)

    @functools.wraps(eager)
    def forward(*args: Any, **kwargs: Any) -> Any:
        return one_image_at_a_time(eager, args, kwargs, ahead)

    setattr(forward, ONE_IMAGE_OF, eager)
    module.forward = forward
    return ahead


class EncodedAhead:
    """Images an encoder ran before their batch did (while it gathered). Each output is used
    once, by the batch call for an image with the very same pixels and settings: the same
    numbers that call would have computed, since it too runs one image alone."""

    def __init__(self, forward: Callable[..., Any], keep: int = 32) -> None:
        self._forward = forward
        self._keep = keep  # a bound, should outputs never be taken nor cleared
        self._outputs: list[tuple[Any, dict[str, Any], Any]] = []
        self._lock = threading.Lock()
        self.used = 0  # outputs a batch took instead of encoding again (tests read it)

    def encode(self, pixel_values: Any, **settings: Any) -> None:
        """Run the encoder on one image (a batch of 1) now, for its batch to take later."""
        output = self._forward(pixel_values=pixel_values, **settings)
        with self._lock:
            self._outputs.append((pixel_values, settings, output))
            del self._outputs[: -self._keep]

    def clear(self) -> None:
        """Drop what no batch took (its request timed out, or its batch failed first)."""
        with self._lock:
            self._outputs.clear()

    def take(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The output encoded ahead for this one-image call, or None."""
        import torch

        pixels = kwargs.get("pixel_values")
        settings = {name: value for name, value in kwargs.items() if name != "pixel_values"}
        if args or pixels is None or not all(map(_plain, settings.values())):
            return None
        with self._lock:
            for index, (seen, seen_settings, output) in enumerate(self._outputs):
                if (
                    seen_settings == settings
                    and seen.shape == pixels.shape
                    and seen.dtype == pixels.dtype
                    and bool(torch.equal(seen, pixels))
                ):
                    del self._outputs[index]
                    self.used += 1
                    return output
        return None


def _plain(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def one_image_at_a_time(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ahead: EncodedAhead | None = None,
) -> Any:
    """``function`` called on each image of the batch alone (every tensor argument whose first
    dimension is the batch is sliced), its outputs concatenated back into one batch; an image
    ``ahead`` already encoded is taken from there."""
    size = _batch_size(args, kwargs)

    def alone(one_args: tuple[Any, ...], one_kwargs: dict[str, Any]) -> Any:
        output = None if ahead is None else ahead.take(one_args, one_kwargs)
        return function(*one_args, **one_kwargs) if output is None else output

    if size is None or size <= 1:
        return alone(args, kwargs) if size == 1 else function(*args, **kwargs)

    def image(value: Any, index: int) -> Any:
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0 and int(shape[0]) == size:
            return value[index : index + 1]
        return value

    outputs = [
        alone(
            tuple(image(value, index) for value in args),
            {name: image(value, index) for name, value in kwargs.items()},
        )
        for index in range(size)
    ]
    return _concatenated(outputs)


def _concatenated(parts: list[Any]) -> Any:
    """One batch from per-image outputs: tensors, tuples of them, or transformers' ModelOutput
    records (dicts of them, None fields left out)."""
    first = parts[0]
    if first is None:
        return None
    if hasattr(first, "shape"):
        import torch

        return torch.cat(parts, dim=0)
    if isinstance(first, tuple):
        return type(first)(_concatenated(list(items)) for items in zip(*parts, strict=True))
    if hasattr(first, "keys"):
        return type(first)(**{key: _concatenated([part[key] for part in parts]) for key in first})
    return first


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The first dimension of the first tensor-like argument (None when there is none)."""
    for value in (*args, *kwargs.values()):
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return None
