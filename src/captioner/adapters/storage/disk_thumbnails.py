"""Thumbnail store on local disk: one small WebP per distinct image, made once."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from captioner.adapters.storage.durable_files import storage_fault, write_atomically
from captioner.domain.layout import THUMBNAILS, thumbnail_digest, thumbnail_name
from captioner.domain.model import ImageDigest, Thumbnail

log = logging.getLogger(__name__)

CONTENT_TYPE = "image/webp"
_SUFFIX = ".webp"


class DiskThumbnailStore:
    """Implements the ThumbnailStore port: ``<data-dir>/thumbnails/ab/cd/<sha256>.webp``.

    The name is the digest of the original's bytes, so a thumbnail never goes stale and
    every record of the same image shares it. Files are written atomically (temp + rename):
    a reader sees a whole thumbnail or none. ``render`` turns the original's bytes into the
    thumbnail's (the container passes the Pillow renderer, as it does to the S3 store).
    """

    def __init__(
        self,
        data_dir: Path,
        render: Callable[[BinaryIO], bytes],
        write: Callable[[Path, BinaryIO | bytes], None] = write_atomically,
    ) -> None:
        self._root = Path(data_dir).resolve() / THUMBNAILS
        self._render = render
        self._write = write  # a test hands in one that fails like a full or read-only disk
        # Two first requests for the same image would both decode it; they wait on one lock
        # per digest instead, so different images render side by side. A lock lives while
        # someone holds or waits on it (weak values), and a kept thumbnail takes none.
        self._guard = threading.Lock()
        self._making: weakref.WeakValueDictionary[str, threading.Lock] = (
            weakref.WeakValueDictionary()
        )

    def path_of(self, digest: ImageDigest) -> Path:
        return self._root / thumbnail_name(digest, _SUFFIX)

    def open(self, digest: ImageDigest) -> Thumbnail | None:
        """The kept thumbnail, or None when none was made yet."""
        try:
            return Thumbnail(self.path_of(digest).open("rb"), CONTENT_TYPE)
        except FileNotFoundError:
            return None

    def open_or_make(self, digest: ImageDigest, open_original: Callable[[], BinaryIO]) -> Thumbnail:
        kept = self.open(digest)
        if kept is not None:
            return kept
        with self._one_at_a_time(digest):
            # Looked again only on a miss: a request that waited here for the same image
            # finds the thumbnail the first one just made.
            kept = self.open(digest)
            if kept is not None:
                return kept
            with open_original() as original:
                data = self._render(original)
            try:
                self._write(self.path_of(digest), data)
            except OSError as error:
                fault = storage_fault(error, self._root)
                if fault is None:
                    raise
                # A full or read-only disk must not stop the gallery: serve the preview made
                # now, and keep it once the disk takes writes again.
                log.warning("thumbnail not kept: %s", fault)
        return Thumbnail(io.BytesIO(data), CONTENT_TYPE)

    def digests(self) -> Iterator[ImageDigest]:
        if not self._root.is_dir():
            return
        for file in sorted(self._root.glob(f"*/*/*{_SUFFIX}")):
            digest = thumbnail_digest(file.relative_to(self._root).as_posix(), _SUFFIX)
            if digest is not None:  # else not one of ours (a temp file left by a crash)
                yield digest

    @contextlib.contextmanager
    def _one_at_a_time(self, digest: ImageDigest) -> Iterator[None]:
        """Hold the lock of this digest (and of no other)."""
        with self._guard:
            lock = self._making.get(digest.hex)
            if lock is None:
                lock = threading.Lock()
                self._making[digest.hex] = lock
        with lock:
            yield

    def delete(self, digest: ImageDigest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(digest).unlink()
