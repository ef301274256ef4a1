"""`captioner backup` and `restore`: a point-in-time copy of the library, and putting it back."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from captioner import __version__
from captioner.backups import BackupSummary, OnFile, back_up, restore
from captioner.config import Settings
from captioner.container import opened
from captioner.entrypoints.cli import library


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    backup = commands.add_parser(
        "backup",
        parents=[common],
        help="copy the catalogue and the image files it needs into a folder",
        description="Copy the catalogue as of one instant (SQLite's online backup API, or "
        "pg_dump with database_url), then every image file that copy needs (read from the "
        "store in effect, disk or S3), then manifest.json with each file's SHA-256, into "
        "DEST, a new or empty folder. Safe while servers upload: the backup is the library "
        "as of its start. Thumbnails are left out (they are made again when asked for).",
    )
    backup.add_argument(
        "destination", type=Path, metavar="DEST", help="a new or empty folder to write into"
    )
    restoring = commands.add_parser(
        "restore",
        parents=[common],
        help="put a backup back into the data dir (or database and store) in effect",
        description="Check every file of the backup in SRC against its manifest (refusing a "
        "damaged or partial one before anything is written), copy the image files into the "
        "store in effect, then the catalogue in one step, then run `captioner check`. Stop "
        "servers on the target first.",
    )
    restoring.add_argument(
        "source", type=Path, metavar="SRC", help="a folder `captioner backup` wrote"
    )
    restoring.add_argument(
        "--replace",
        action="store_true",
        help="restore over a library that is there: its catalogue is replaced and its image "
        "files and thumbnails the backup does not have are removed",
    )


def backup(settings: Settings, args: argparse.Namespace) -> int:
    with opened(args.containers(settings, False)) as container, _progress() as on_file:
        summary = back_up(
            container.catalogue_backups(),
            container.image_store(),
            args.destination,
            __version__,
            on_file,
        )
    print(f"backed up {_contents(summary)} to {args.destination} in {summary.seconds:.1f} s")
    return 0


def restore_backup(settings: Settings, args: argparse.Namespace) -> int:
    with opened(args.containers(settings, False)) as container, _progress() as on_file:
        summary = restore(
            args.source,
            container.catalogue_backups(),
            container.image_store(),
            container.thumbnails(),
            replace=args.replace,
            on_file=on_file,
        )
    print(f"restored {_contents(summary)} from {args.source} in {summary.seconds:.1f} s")
    # Nothing serves the target during a restore: every file without a record is an orphan.
    return library.check(settings, argparse.Namespace(**vars(args), repair=False, orphan_grace=0))


def _contents(summary: BackupSummary) -> str:
    manifest = summary.manifest
    return (
        f"{manifest.records} record(s) of {manifest.images} image(s), {manifest.keys} key(s), "
        f"{len(manifest.files)} file(s) ({manifest.file_bytes / 1e6:.1f} MB) and the "
        f"{manifest.engine} catalogue ({manifest.catalogue.bytes / 1e6:.1f} MB, schema "
        f"version {manifest.schema_version}), taken {manifest.started_at}"
    )


@contextmanager
def _progress() -> Iterator[OnFile]:
    """A progress bar over the files on stderr when it is a terminal."""
    bar = tqdm(unit="file", file=sys.stderr, disable=not sys.stderr.isatty())

    def on_file(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield on_file
    finally:
        bar.close()
