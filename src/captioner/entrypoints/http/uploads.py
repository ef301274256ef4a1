"""Upload spooling: multipart file parts go to a spooled temp file and are hashed as they arrive."""

from __future__ import annotations

import errno
import hashlib
import tempfile
from typing import IO, Any

from flask import Request, current_app

from captioner.domain.errors import StorageFull, StorageUnavailable
from captioner.domain.model import ImageDigest

SPOOL_BYTES = 512 * 1024  # bigger uploads go to a temp file, never all into memory


class HashingSpooledFile(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
    """A spooled temp file that keeps the SHA-256 of everything written to it, in order.

    werkzeug's multipart parser writes each part front to back, so the digest is ready when
    the form is parsed: the bytes are hashed once, while they arrive.
    """

    def __init__(self, directory: str | None = None) -> None:
        super().__init__(max_size=SPOOL_BYTES, mode="w+b", dir=directory)
        self._sha256 = hashlib.sha256()

    def write(self, data: Any) -> int:
        self._sha256.update(data)
        try:
            return int(super().write(data))
        except OSError as error:
            # Big uploads spill to the data dir's disk: when it is full or read-only, say so
            # (507 / 503) rather than fail with an internal error.
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise StorageFull(
                    "Storage is full: the upload could not be received, the data dir's disk "
                    f"has no room left ({error.strerror}). Free disk space, then upload again."
                ) from error
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StorageUnavailable(
                    "The upload could not be received: the data dir is read-only "
                    f"({error.strerror}). Remount it read-write or fix its permissions."
                ) from error
            raise

    @property
    def digest(self) -> ImageDigest:
        return ImageDigest(self._sha256.hexdigest())


class UploadRequest(Request):
    """Flask request whose file uploads are spooled and hashed while the body is read."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        # Spill into the data dir, not /tmp: /tmp is often RAM (tmpfs), the data dir is disk.
        # The file has no name there (or loses it at once), so a crash leaves nothing behind.
        return HashingSpooledFile(current_app.config.get("CAPTIONER_SPOOL_DIR"))


def digest_of(stream: object) -> ImageDigest | None:
    """The digest computed while receiving, when the stream came from UploadRequest."""
    if isinstance(stream, HashingSpooledFile):
        return stream.digest
    return None
