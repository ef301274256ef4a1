"""Copying stored image files into another store (disk to S3 and back): create-only, checked."""

from __future__ import annotations

import functools
import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from captioner.domain.errors import ImageNotFound
from captioner.domain.layout import StoredPath
from captioner.domain.ports import ImageStore, ThumbnailStore

_CHUNK = 1024 * 1024
# Spooled in memory up to this size, then in a temp file: a large image costs no RAM.
_SPOOL_BYTES = 8 * 1024 * 1024


@dataclass
class StoreCopied:
    """What a store copy did: files copied, already there, gone meanwhile, and damaged ones."""

    copied: int = 0
    already_there: int = 0
    gone: int = 0
    bytes_copied: int = 0
    thumbnails: int = 0
    # Files whose bytes do not hash to their name (source) or that hold other bytes (target).
    damaged_in_source: list[str] = field(default_factory=list)
    damaged_in_target: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.damaged_in_source and not self.damaged_in_target


@dataclass(frozen=True)
class Thumbnails:
    """The thumbnails beside each store: those the source has are made on the target."""

    source: ThumbnailStore
    target: ThumbnailStore


def stored_paths(store: ImageStore) -> list[str]:
    """The store's image paths, in name order (files that are no image's are left out)."""
    found = []
    for path in store.paths():
        try:
            StoredPath.parse(path)
        except ValueError:
            continue
        found.append(path)
    return sorted(found)


def copy_store(
    source: ImageStore,
    target: ImageStore,
    paths: list[str],
    thumbnails: Thumbnails | None = None,
    on_file: Callable[[str], None] = lambda path: None,
) -> StoreCopied:
    """Copy each of ``paths`` from ``source`` to ``target`` under the same name.

    Writes are create-only: a file the target has is read and hashed, skipped when its
    SHA-256 is its name's and reported damaged otherwise (never overwritten). Each copied
    file is hashed on the way out of the source and again read back from the target.
    """
    started = time.monotonic()
    copied = StoreCopied()
    for path in paths:
        _copy_one(source, target, StoredPath.parse(path), copied)
        on_file(path)
    if thumbnails is not None:
        _make_thumbnails(thumbnails, target, paths, copied)
    copied.seconds = time.monotonic() - started
    return copied


def _copy_one(
    source: ImageStore, target: ImageStore, stored: StoredPath, copied: StoreCopied
) -> None:
    path = str(stored)
    if target.exists(path):
        if target.digest_of(path) == stored.digest:
            copied.already_there += 1
        else:
            copied.damaged_in_target.append(path)
        return
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        try:
            digest, size = _spooled(source, path, spool)
        except (ImageNotFound, FileNotFoundError):  # deleted since the listing
            copied.gone += 1
            return
        if digest != stored.digest.hex:
            copied.damaged_in_source.append(path)
            return
        spool.seek(0)
        target.save(stored.digest, spool, stored.extension)  # type: ignore[arg-type]
    if target.digest_of(path) != stored.digest:
        copied.damaged_in_target.append(path)
        return
    copied.copied += 1
    copied.bytes_copied += size


def _spooled(store: ImageStore, path: str, spool: IO[bytes]) -> tuple[str, int]:
    """Copy the file into ``spool``, hashing it on the way: its SHA-256 and size."""
    digest = hashlib.sha256()
    size = 0
    with store.open(path) as content:
        while chunk := content.read(_CHUNK):
            digest.update(chunk)
            spool.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _make_thumbnails(
    thumbnails: Thumbnails, target: ImageStore, paths: list[str], copied: StoreCopied
) -> None:
    """The source's thumbnails, made on the target from the copied originals (the same
    renderer gives the same preview, and the target's own names and types are used)."""
    path_of = {StoredPath.parse(path).digest: path for path in paths}
    for digest in thumbnails.source.digests():
        path = path_of.get(digest)
        if path is None or path in copied.damaged_in_target:
            continue
        made = thumbnails.target.open_or_make(digest, functools.partial(target.open, path))
        made.content.close()
        copied.thumbnails += 1
