"""Image store on local disk, content-addressed by SHA-256, written atomically."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from captioner.adapters.storage.durable_files import (
    free_bytes,
    link_atomically,
    storage_fault,
    storage_faults_as_domain_errors,
    write_atomically,
)
from captioner.domain.errors import StorageFull
from captioner.domain.layout import UPLOADS, StoredPath
from captioner.domain.model import ImageDigest, Readiness

DEFAULT_MIN_FREE_MB = 100.0
_MB = 1024 * 1024


class FilesystemImageStore:
    """Implements the ImageStore port: ``<data-dir>/`` + the StoredPath of each image."""

    def __init__(
        self,
        data_dir: Path,
        min_free_mb: float = DEFAULT_MIN_FREE_MB,
        write: Callable[[Path, BinaryIO | bytes], None] = write_atomically,
    ) -> None:
        self._data_dir = Path(data_dir).resolve()
        self._root = self._data_dir / UPLOADS
        self._min_free_mb = min_free_mb
        # The durable write itself; a test hands in one that fails like a full disk where
        # mounting a tiny file system is not permitted.
        self._write = write

    def save(
        self,
        digest: ImageDigest,
        content: BinaryIO,
        extension: str,
        local_path: str | None = None,
    ) -> str:
        relative = str(StoredPath(digest, extension))
        target = self._data_dir / relative
        if target.exists():
            return relative
        with storage_faults_as_domain_errors(self._root):
            self._root.mkdir(parents=True, exist_ok=True)
            # Keep min_free_mb for the database and the system: refuse before filling the disk.
            self._refuse_when_nearly_full()
            # A spooled upload on the same disk becomes the stored file by a link, not a copy.
            if local_path is None or not link_atomically(target, local_path):
                self._write(target, content)
        return relative

    def open(self, path: str) -> BinaryIO:
        return self._resolve(path).open("rb")

    def exists(self, path: str) -> bool:
        try:
            return self._resolve(path).is_file()
        except ValueError:
            return False

    def delete(self, path: str) -> None:
        with storage_faults_as_domain_errors(self._root), contextlib.suppress(FileNotFoundError):
            self._resolve(path).unlink()

    def paths(self) -> Iterator[str]:
        if not self._root.is_dir():
            return
        for file in sorted(self._root.glob("*/*/*")):
            # Temp files left by a crash mid-write are listed too: no record points at them,
            # so a check reports them as orphans and a repair removes them.
            if file.is_file():
                yield file.relative_to(self._data_dir).as_posix()

    def digest_of(self, path: str) -> ImageDigest:
        with self.open(path) as file:
            return ImageDigest.of_stream(file)

    def age_s(self, path: str) -> float:
        return max(0.0, time.time() - self._resolve(path).stat().st_mtime)

    def readiness(self) -> Readiness:
        probe = self._root / ".readyz-probe"
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            self._refuse_when_nearly_full()
            # The same durable write an upload makes (temp file, fsync, rename), of a few bytes
            # (an empty file fits on a full disk), so a disk that takes no writes is seen here
            # before an upload finds out.
            self._write(probe, b"probe")
            probe.unlink()
        except OSError as error:
            fault = storage_fault(error, self._root)
            reason = fault or f"image store {self._root} is not writable: {error}"
            return Readiness(False, str(reason))
        except StorageFull as full:
            return Readiness(False, str(full))
        return Readiness.ok()

    def _refuse_when_nearly_full(self) -> None:
        free_mb = free_bytes(self._root) / _MB
        if free_mb < self._min_free_mb:
            raise StorageFull(
                f"Storage is full: {free_mb:.1f} MB free under {self._root}, below "
                f"min_free_mb ({self._min_free_mb:g} MB). Free disk space (or lower "
                "min_free_mb), then upload again."
            )

    def _resolve(self, path: str) -> Path:
        """Map a stored relative path back to disk, refusing anything outside uploads/."""
        candidate = (self._data_dir / path).resolve()
        if not candidate.is_relative_to(self._root):
            raise ValueError(f"path outside the image store: {path!r}")
        return candidate
