"""Backup and restore: a point-in-time copy of the catalogue, the image files it needs and a
manifest of their SHA-256s in one folder, and putting such a folder back after checking it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from captioner.atomic_files import write_atomically
from captioner.domain.errors import BackupRefused
from captioner.domain.layout import StoredPath
from captioner.domain.model import CatalogueSnapshot, ImageDigest
from captioner.domain.ports import CatalogueBackups, ImageStore, ThumbnailStore

MANIFEST = "manifest.json"
FORMAT = "captioner-backup"
FORMAT_VERSION = 1
_PROBLEMS_SHOWN = 10

OnFile = Callable[[int, int], None]  # told (files done, files in all) as each file is copied


@dataclass(frozen=True)
class BackedUpFile:
    """One file of a backup: its path inside the backup folder, size and SHA-256."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a finished backup holds; written last, so a backup without one is partial."""

    captioner_version: str
    started_at: str
    finished_at: str
    engine: str
    schema_version: int
    records: int
    images: int
    keys: int
    catalogue: BackedUpFile
    files: tuple[BackedUpFile, ...]

    @property
    def file_bytes(self) -> int:
        return sum(file.bytes for file in self.files)

    def to_json(self) -> str:
        fields = asdict(self)
        counts = {name: fields.pop(name) for name in ("records", "images", "keys")}
        counts["files"] = len(self.files)
        counts["file_bytes"] = self.file_bytes
        return json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, **fields, "counts": counts},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """The manifest ``text`` holds; ValueError (or KeyError, TypeError) when it is none."""
        fields: dict[str, Any] = json.loads(text)
        if fields.pop("format", None) != FORMAT or fields.pop("format_version", None) != 1:
            raise ValueError(f"not a {FORMAT} manifest of version {FORMAT_VERSION}")
        counts = fields.pop("counts")
        return cls(
            **{name: counts[name] for name in ("records", "images", "keys")},
            **{key: value for key, value in fields.items() if key not in ("catalogue", "files")},
            catalogue=BackedUpFile(**fields["catalogue"]),
            files=tuple(BackedUpFile(**file) for file in fields["files"]),
        )


@dataclass(frozen=True)
class BackupSummary:
    """A backup or restore done: its manifest and how long it took."""

    manifest: Manifest
    seconds: float


def back_up(
    catalogue: CatalogueBackups,
    store: ImageStore,
    destination: Path,
    captioner_version: str,
    on_file: OnFile | None = None,
) -> BackupSummary:
    """Copy the catalogue as of now, then every image file that copy needs, into
    ``destination`` (a new or empty folder), then the manifest.

    Files are named by their content, so one the snapshot needs has the same bytes however
    long after the snapshot it is read: uploads going on meanwhile do not tear the backup.
    A delete meanwhile can take a file the snapshot needs; the backup then fails, saying so.
    """
    start = time.monotonic()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise BackupRefused(
            f"{destination} is not an empty folder; back up into a new one "
            "(a backup is never written over another)"
        )
    destination.mkdir(parents=True, exist_ok=True)
    started_at = _now()
    copy = destination / catalogue.file_name
    snapshot = catalogue.snapshot(copy)
    files = tuple(_copy_files(store, snapshot, destination, on_file))
    # One sync(2) for every file, before the manifest that says they are whole: Linux's
    # waits for the writes, and costs one disk flush where a fsync per file and folder
    # cost two each (docs/deployment.md has the figures).
    os.sync()
    manifest = Manifest(
        captioner_version=captioner_version,
        started_at=started_at,
        finished_at=_now(),
        engine=snapshot.engine,
        schema_version=snapshot.schema_version,
        records=snapshot.records,
        images=snapshot.images,
        keys=snapshot.keys,
        catalogue=_described(destination, catalogue.file_name),
        files=files,
    )
    write_atomically(destination / MANIFEST, manifest.to_json().encode(), mode=0o644)
    return BackupSummary(manifest, time.monotonic() - start)


def _copy_files(
    store: ImageStore, snapshot: CatalogueSnapshot, destination: Path, on_file: OnFile | None
) -> Iterator[BackedUpFile]:
    paths = sorted(snapshot.paths)
    for done, path in enumerate(paths, 1):
        expected = _digest_named_in(path)
        try:
            with store.open(path) as original:
                write_atomically(destination / path, original, mode=0o644, durable=False)
        except FileNotFoundError as error:
            raise BackupRefused(
                f"{path} is gone: deleted since the catalogue was copied, or missing before "
                "(`captioner check` tells). Back up again into a new folder."
            ) from error
        copied = _described(destination, path)
        if copied.sha256 != expected:
            raise BackupRefused(
                f"{path}'s bytes no longer match their SHA-256: the stored file is damaged. "
                "`captioner check --repair` drops its records; then back up again."
            )
        if on_file is not None:
            on_file(done, len(paths))
        yield copied


def read_manifest(source: Path) -> Manifest:
    """The manifest of the backup in ``source``; BackupRefused when there is none."""
    try:
        text = (source / MANIFEST).read_text("utf-8")
    except FileNotFoundError as error:
        raise BackupRefused(
            f"{source} has no {MANIFEST}: it is not a backup, or a backup that did not finish "
            "(the manifest is written last). Restore another backup."
        ) from error
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise BackupRefused(f"{source / MANIFEST} is damaged or not a backup's: {error}") from error


def problems_of(source: Path, manifest: Manifest, catalogue: CatalogueBackups) -> list[str]:
    """Every way the backup in ``source`` differs from its manifest (a file missing, cut
    short or changed), and why its catalogue copy cannot go back here; empty when sound."""
    problems = []
    if manifest.engine != catalogue.engine:
        problems.append(
            f"the backup's catalogue is {manifest.engine}, the catalogue in effect is "
            f"{catalogue.engine}: restore into a data dir of that kind, then move it with "
            "`captioner db copy`"
        )
        return problems
    for file in manifest.files:
        try:
            named = _digest_named_in(file.path)
        except ValueError:
            named = None
        if named != file.sha256:
            problems.append(f"{file.path} is not the stored path of bytes {file.sha256[:12]}")
    for file in (manifest.catalogue, *manifest.files):
        problem = _problem_with(source, file)
        if problem is not None:
            problems.append(problem)
    if not problems:
        problem = catalogue.problem_with(source / manifest.catalogue.path)
        if problem is not None:
            problems.append(problem)
    return problems


def restore(
    source: Path,
    catalogue: CatalogueBackups,
    store: ImageStore,
    thumbnails: ThumbnailStore | None = None,
    replace: bool = False,
    on_file: OnFile | None = None,
) -> BackupSummary:
    """Put the backup in ``source`` into the catalogue and store in effect, once every file
    is checked against the manifest; nothing is written when a check fails.

    Files first, then the catalogue in one step: a restore cut short leaves files no record
    needs yet, and running it again finishes it. A target that holds a library (records or
    keys, or image files the backup does not have) is refused unless ``replace``, which
    replaces its catalogue and removes those files and their thumbnails.
    """
    start = time.monotonic()
    manifest = read_manifest(source)
    problems = problems_of(source, manifest, catalogue)
    if problems:
        shown = "\n  ".join(problems[:_PROBLEMS_SHOWN])
        more = len(problems) - _PROBLEMS_SHOWN
        raise BackupRefused(
            f"the backup in {source} is damaged; nothing was restored:\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    wanted = {file.path for file in manifest.files}
    foreign = [path for path in store.paths() if path not in wanted]
    if not replace and (catalogue.holds_a_library() or foreign):
        what = "a catalogue with records or keys" if not foreign else f"{len(foreign)} file(s)"
        raise BackupRefused(
            f"the target holds a library already ({what}); restore into an empty data dir, "
            "or pass --replace to replace it (its catalogue and its image files go)"
        )
    for done, file in enumerate(manifest.files, 1):
        stored = StoredPath.parse(file.path)
        with (source / file.path).open("rb") as content:
            store.save(stored.digest, content, stored.extension)
        if on_file is not None:
            on_file(done, len(manifest.files))
    catalogue.restore(source / manifest.catalogue.path)
    if replace:
        _remove_foreign(store, thumbnails, foreign, {_digest_named_in(path) for path in wanted})
    return BackupSummary(manifest, time.monotonic() - start)


def _remove_foreign(
    store: ImageStore, thumbnails: ThumbnailStore | None, foreign: Iterable[str], kept: set[str]
) -> None:
    for path in foreign:
        store.delete(path)
    if thumbnails is not None:
        for digest in list(thumbnails.digests()):
            if digest.hex not in kept:
                thumbnails.delete(digest)


def _problem_with(source: Path, file: BackedUpFile) -> str | None:
    where = source / file.path
    if not where.resolve().is_relative_to(source.resolve()):
        return f"{file.path} lies outside the backup"
    try:
        size = where.stat().st_size
    except FileNotFoundError:
        return f"{file.path} is missing"
    if size != file.bytes:
        return f"{file.path} has {size} bytes, the manifest says {file.bytes} (cut short?)"
    if _sha256(where) != file.sha256:
        return f"{file.path}'s SHA-256 differs from the manifest's (its bytes changed)"
    return None


def _described(folder: Path, path: str) -> BackedUpFile:
    where = folder / path
    return BackedUpFile(path, where.stat().st_size, _sha256(where))


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return ImageDigest.of_stream(file).hex


def _digest_named_in(path: str) -> str:
    return StoredPath.parse(path).digest.hex


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
