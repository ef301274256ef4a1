"""Upload spooling: multipart file parts go to a spooled temp file and are hashed as they arrive."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from typing import IO, Any

from flask import Request, current_app, request

from captioner.domain.errors import StorageFull, StorageUnavailable
from captioner.domain.model import ImageDigest

SPOOL_BYTES = 512 * 1024  # bigger uploads go to a temp file, never all into memory


class HashingSpooledFile(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
    """A spooled temp file that keeps the SHA-256 of everything written to it, in order.

    werkzeug's multipart parser writes each part front to back, so the digest is ready when
    the form is parsed: the bytes are hashed once, while they arrive. A big upload spills
    into a file without a name (so a crash leaves nothing behind) that the image store can
    still link into place instead of copying it: see ``local_path``.
    """

    _rolled: bool  # SpooledTemporaryFile's own flag, which rollover below sets too

    def __init__(self, directory: str | None = None) -> None:
        super().__init__(max_size=SPOOL_BYTES, mode="w+b", dir=directory)
        self._sha256 = hashlib.sha256()
        self._directory = directory
        self._linkable = False

    def rollover(self) -> None:
        # Mirrors SpooledTemporaryFile.rollover, with a file os.link can give a name to.
        if self._rolled or self._linkable:
            return
        disk = _linkable_temp_file(self._directory)
        if disk is None:  # no O_TMPFILE here: a plain temp file, copied when stored
            super().rollover()
            return
        in_memory = self._file
        disk.write(in_memory.getvalue())  # type: ignore[attr-defined]  # a BytesIO until now
        disk.seek(in_memory.tell())
        self._file = disk
        self._rolled = True
        self._linkable = True

    @property
    def local_path(self) -> str | None:
        """A path the open file can be linked from (while it is open), or None in memory."""
        if not self._linkable:
            return None
        return f"/proc/self/fd/{self._file.fileno()}"

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spools: list[HashingSpooledFile] = []

    def close(self) -> None:
        """Flask calls this when the request ends: close every spool, also those of a form
        that failed half-way (werkzeug only closes the files of a form it finished)."""
        super().close()
        for spool in self._spools:
            spool.close()

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        # Spill into the data dir, not /tmp: /tmp is often RAM (tmpfs), the data dir is disk.
        # The file has no name there (or loses it at once), so a crash leaves nothing behind.
        spool = HashingSpooledFile(current_app.config.get("CAPTIONER_SPOOL_DIR"))
        self._spools.append(spool)
        return spool


def _linkable_temp_file(directory: str | None) -> IO[bytes] | None:
    """A file in ``directory`` with no name, which ``os.link`` can still give one (Linux).

    Python's own TemporaryFile opens with O_EXCL, which forbids exactly that link.
    """
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or directory is None:
        return None
    try:
        fd = os.open(directory, flag | os.O_RDWR, 0o600)
    except OSError:  # a file system without O_TMPFILE
        return None
    return os.fdopen(fd, "w+b")


def local_path_of(stream: object) -> str | None:
    """Where the spooled upload can be linked from, when UploadRequest spilled it to disk."""
    if isinstance(stream, HashingSpooledFile):
        return stream.local_path
    return None


def digest_of(stream: object) -> ImageDigest | None:
    """The digest computed while receiving, when the stream came from UploadRequest."""
    if isinstance(stream, HashingSpooledFile):
        return stream.digest
    return None


def missing_image_hint() -> str:
    """How to send the image, for a POST /upload that came without one: what it sent instead."""
    example = f"e.g. curl -F image=@photo.jpg {request.host_url}upload"
    others = sorted({name for name, file in request.files.items(multi=True) if name != "image"})
    if others:
        fields = ", ".join(repr(name[:64]) for name in others)  # repr: a name is the client's
        return (
            f"This request sent a file in the form field {fields}; the image must be in the "
            f"field 'image', {example}"
        )
    if request.mimetype != "multipart/form-data":
        sent = f"is {request.mimetype[:100]!r}" if request.mimetype else "is missing"
        return (
            f"This request's Content-Type {sent}: send a multipart form "
            f"(multipart/form-data) with the image in the field 'image', {example}"
        )
    return f"Send the image as the multipart form field 'image', {example}"
