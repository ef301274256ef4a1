"""`captioner db copy` and `store copy`: moving a library to PostgreSQL and S3 (and back)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from captioner.config import Settings
from captioner.container import opened
from captioner.domain.catalogue_copy import CatalogueCopied, copy_catalogue
from captioner.domain.store_copy import StoreCopied, Thumbnails, copy_store, stored_paths
from captioner.entrypoints.cli.services import ContainerFactory

_POSTGRES = ("postgresql://", "postgres://")


def catalogue_at(settings: Settings, to: str) -> Settings:
    """The settings whose catalogue ``to`` names: a PostgreSQL URL, or a data dir (SQLite)."""
    if to.startswith(_POSTGRES):
        return dataclasses.replace(settings, database_url=to)
    return dataclasses.replace(settings, database_url="", data_dir=_data_dir(to))


def store_at(settings: Settings, to: str) -> Settings:
    """The settings whose image store ``to`` names: ``s3://bucket/prefix``, or a data dir."""
    if to.startswith("s3://"):
        return dataclasses.replace(settings, store_url=to)
    return dataclasses.replace(settings, store_url="", data_dir=_data_dir(to))


def _data_dir(to: str) -> Path:
    return Path(to.removeprefix("file://"))


def db_copy(settings: Settings, args: argparse.Namespace) -> int:
    containers: ContainerFactory = args.containers
    target_settings = catalogue_at(settings, args.to)
    with (
        opened(containers(settings, False)) as source,
        opened(containers(target_settings, False)) as target,
        tqdm(unit="row", file=sys.stderr, disable=not sys.stderr.isatty()) as bar,
    ):
        copied = copy_catalogue(
            source.tables(),
            target.tables(),
            prune=args.prune,
            batch=args.batch,
            on_rows=lambda table, rows: bar.update(rows),
        )
    _print_catalogue(copied)
    if copied.matches:
        return 0
    print(
        "captioner: the source and the copy differ: rows were written to the source while "
        "it was copied. Run the same command again (after stopping writes, for an exact copy).",
        file=sys.stderr,
    )
    return 1


def _print_catalogue(copied: CatalogueCopied) -> None:
    print("table\trows\tinserted\tupdated\tdeleted\tunchanged\tsha256 (source)\tverified")
    for table in copied.tables:
        rows = table.source.rows if table.source else 0
        digest = table.source.sha256 if table.source else ""
        print(
            f"{table.name}\t{rows}\t{table.inserted}\t{table.updated}\t{table.deleted}\t"
            f"{table.unchanged}\t{digest}\t{'yes' if table.matches else 'NO'}"
        )
    rate = copied.rows_written / copied.seconds if copied.seconds else 0.0
    print(
        f"{copied.rows_written} rows written in {copied.seconds:.2f} s ({rate:.0f} rows/s), "
        f"verified in {copied.verify_seconds:.2f} s"
    )


def store_copy(settings: Settings, args: argparse.Namespace) -> int:
    containers: ContainerFactory = args.containers
    with (
        opened(containers(settings, False)) as source,
        opened(containers(store_at(settings, args.to), False)) as target,
    ):
        paths = stored_paths(source.image_store())
        thumbnails = (
            Thumbnails(source.thumbnails(), target.thumbnails()) if args.thumbnails else None
        )
        with tqdm(
            total=len(paths), unit="file", file=sys.stderr, disable=not sys.stderr.isatty()
        ) as bar:
            copied = copy_store(
                source.image_store(),
                target.image_store(),
                paths,
                thumbnails,
                on_file=lambda path: bar.update(1),
            )
    _print_store(copied)
    return 0 if copied.complete else 1


def _print_store(copied: StoreCopied) -> None:
    print(
        f"{copied.copied} files copied ({copied.bytes_copied:,} bytes) in {copied.seconds:.2f} s, "
        f"{copied.already_there} already there (SHA-256 checked), {copied.gone} deleted "
        f"since listed, {copied.thumbnails} thumbnails made"
    )
    for path in copied.damaged_in_source:
        print(f"captioner: {path}: its bytes do not match its SHA-256; not copied", file=sys.stderr)
    for path in copied.damaged_in_target:
        print(
            f"captioner: {path}: the target holds other bytes under this name; left as it is "
            "(remove it there and run again)",
            file=sys.stderr,
        )
