"""Crash-safe file writes: temp file, fsync, rename, fsync dir; a crash leaves the old file
or the new one. The disk store's files and the sidecars and exports beside them share it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".incoming-"


def write_atomically(
    target: Path, content: BinaryIO | bytes, mode: int | None = None, durable: bool = True
) -> None:
    """Make ``target`` hold exactly ``content``, or leave it as it was; ``mode`` sets its
    permissions (default: the temp file's, owner only). ``durable=False`` leaves the sync to
    the caller, who writes many files first and syncs them all at once.

    A crash at any point leaves either the old state or the whole new file, never a partial
    one under the final name; at worst a ``.incoming-*`` temp file, which `captioner check`
    reports as an orphan.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as temp:
            if isinstance(content, bytes):
                temp.write(content)
            else:  # read from where it stands: the caller hands it over at position 0
                shutil.copyfileobj(content, temp, 1 << 20)
            temp.flush()
            if durable:
                os.fsync(temp.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    if durable:
        fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
