"""Crash-safe file writes shared by the disk adapters: write_atomically (from atomic_files),
links made as safely, and storage faults in the domain's terms."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from captioner.atomic_files import fsync_directory, write_atomically
from captioner.domain.errors import CaptionerError, StorageFull, StorageUnavailable

__all__ = ["link_atomically", "storage_fault", "write_atomically"]


def link_atomically(target: Path, source: str) -> bool:
    """Give the file at ``source`` the name ``target`` too (a hard link: no bytes copied).

    The data is synced first and a link appears whole or not at all, so this is as crash-safe
    as write_atomically. False when the file system cannot link it there (another disk, no
    hard links): the caller copies instead. An existing ``target`` is left as it is.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _link_following(source, target)
    except FileExistsError:
        return True
    except OSError:
        return False
    fsync_directory(target.parent)
    return True


def _link_following(source: str, target: Path) -> None:
    # Plain os.link() links a symlink itself; linkat with AT_SYMLINK_FOLLOW (what a directory
    # fd selects) links the file it names: /proc/self/fd/N of a spooled upload included.
    parent, name = os.path.split(source)
    directory = os.open(parent or ".", os.O_RDONLY)
    try:
        os.link(name, target, src_dir_fd=directory, follow_symlinks=True)
    finally:
        os.close(directory)


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_fault(error: OSError, where: Path) -> CaptionerError | None:
    """The domain error a failed disk write means, or None when it is no storage fault.

    Full and read-only disks are conditions an operator fixes, not bugs: they get their own
    answers (507, 503) instead of an internal error.
    """
    if error.errno in _FULL:
        return StorageFull(
            f"Storage is full: no room left under {where} ({error.strerror}). "
            "Free disk space (or raise the quota), then upload again."
        )
    if error.errno in _READ_ONLY:
        return StorageUnavailable(
            f"Storage is read-only: {where} cannot be written ({error.strerror}). "
            "Remount it read-write or fix its permissions; stored images can still be read."
        )
    if error.errno in (errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.ETIMEDOUT):
        return StorageUnavailable(
            f"Storage is unavailable: {where} failed ({error.strerror}). Retry shortly."
        )
    return None


@contextlib.contextmanager
def storage_faults_as_domain_errors(where: Path) -> Iterator[None]:
    """Raise full / read-only / failing disks as StorageFull / StorageUnavailable."""
    try:
        yield
    except OSError as error:
        fault = storage_fault(error, where)
        if fault is None:
            raise
        raise fault from error


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``directory``."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize
