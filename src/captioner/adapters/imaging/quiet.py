"""Pillow's process-wide settings, changed only while our own decoding runs, never at import.

A helper module, not an adapter (like ``pillow_modes``): the decoder and the thumbnail store
share it.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any, cast

from PIL import Image

_UNSET = object()


class _Window:
    """The one shared "Pillow is quiet" window; see ``quiet_pillow``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.limits: list[int] = []  # one entry per block inside the window
        self.filters: list[Any] = []
        self.saved_limit: int | None = None
        self.written_limit: object = _UNSET

    def enter(self, max_pixels: int) -> None:
        with self.lock:
            if not self.limits:
                # Odd but readable files (corrupt EXIF or TIFF tags, bombs below our own
                # limit, which is checked from the header) make Pillow warn: noise here.
                before = list(warnings.filters)
                warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
                warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
                # A filter the host program had already is the host's: it stays.
                self.filters = [item for item in warnings.filters[:2] if item not in before]
            self.limits.append(max_pixels)
            self._apply_limit()

    def leave(self, max_pixels: int) -> None:
        with self.lock:
            self.limits.remove(max_pixels)
            self._apply_limit()
            if not self.limits:
                active = cast(list[Any], warnings.filters)
                for item in self.filters:
                    # Removing an "ignore" filter needs no cache reset: ignoring records
                    # nothing in the per-module warning registries.
                    with contextlib.suppress(ValueError):
                        active.remove(item)
                self.filters = []

    def _apply_limit(self) -> None:
        current = Image.MAX_IMAGE_PIXELS
        if current != self.written_limit:  # first use, or the host program set it meanwhile
            self.saved_limit = current
        wanted = self.saved_limit
        # Pillow refuses by itself above twice its own limit; a larger configured limit must
        # win, or such images would be refused with a message quoting a limit they are under.
        if wanted is not None and self.limits and max(self.limits) > wanted:
            wanted = max(self.limits)
        if wanted != current:
            Image.MAX_IMAGE_PIXELS = wanted
        self.written_limit = wanted


_WINDOW = _Window()


@contextlib.contextmanager
def quiet_pillow(max_pixels: int) -> Iterator[None]:
    """For the length of the block: Pillow's warnings about odd but readable images are
    ignored, and its own pixel limit is at least ``max_pixels``.

    ``warnings.catch_warnings`` swaps process-wide state and is not thread-safe: overlapping
    blocks would restore each other's filters. Instead the first block to enter installs two
    narrow filters and the last to leave removes exactly those, and the pixel limit goes back
    to what it was unless the host program changed it meanwhile; so concurrent decodes share
    one window and, outside our calls, Pillow is as the host program left it.
    """
    _WINDOW.enter(max_pixels)
    try:
        yield
    finally:
        _WINDOW.leave(max_pixels)
