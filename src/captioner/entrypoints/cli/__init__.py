"""The `captioner` command: serve the API, caption files, re-caption, list, export, delete,
check storage, back up and restore."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.errors import CaptionerError
from captioner.entrypoints.cli import (
    admin,
    backup,
    bulk,
    describe,
    edit,
    growth,
    imports,
    library,
    queue,
)
from captioner.entrypoints.cli.output import error_message
from captioner.entrypoints.cli.parser import build_parser
from captioner.entrypoints.cli.services import ContainerFactory
from captioner.entrypoints.logs import configure_logging

# Commands that only work on a library that exists; the others (serve, caption, keys create,
# db upgrade) start one when there is none.
_NEEDS_A_LIBRARY = {"list", "export", "check", "delete", "recaption", "jobs", "edit", "backup"}
_KEYS_NEEDING_A_LIBRARY = {"list", "revoke"}


def main(argv: Sequence[str] | None = None, containers: ContainerFactory = build_container) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    args.containers = containers
    try:
        settings = Settings.load(
            overrides={
                "host": getattr(args, "host", None),
                "port": getattr(args, "port", None),
                "model": getattr(args, "model", None),
                "data_dir": getattr(args, "data_dir", None),
                "prompt": getattr(args, "prompt", None),
                "no_model": getattr(args, "no_model", None),
            },
            config_file=args.config,
        )
    except (ValueError, OSError) as error:
        print(f"captioner: {error}", file=sys.stderr)
        return 2
    if args.command in ("caption", "recaption") and settings.compile == "background":
        # A background compile pays off in a long-running server; a command ends before it is
        # warm and would only take CPU from the model meanwhile (`wait` compiles a batch job).
        settings = dataclasses.replace(settings, compile="off")
    configure_logging(
        settings.log_format, logging.INFO if args.command == "serve" else logging.WARNING
    )
    missing = _missing_library(settings, args)
    if missing is not None:
        print(f"captioner: {missing}", file=sys.stderr)
        return 2
    handler = _COMMANDS[args.command]
    try:
        return handler(settings, args)
    except CaptionerError as error:
        print(f"captioner: {error_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _missing_library(settings: Settings, args: argparse.Namespace) -> str | None:
    """Why a command that reads the library cannot run here (no catalogue), or None.

    With ``database_url`` the PostgreSQL database is the catalogue: opening it says whether
    it is there. Without, the SQLite file in the data dir is; a command that only reads must
    not create an empty one in whatever directory it was run from.
    """
    reads = (
        args.command in _NEEDS_A_LIBRARY
        or (args.command == "keys" and args.keys_command in _KEYS_NEEDING_A_LIBRARY)
        or (args.command == "db" and args.db_command == "copy")
    )
    if not reads or settings.database_url or settings.database_path.is_file():
        return None
    return (
        f"no library in {settings.data_dir.resolve()} (no {settings.database_path.name} "
        "there). Point at yours with --data-dir DIR or CAPTIONER_DATA_DIR=DIR; "
        "`captioner caption` or `captioner serve` starts a new one."
    )


_COMMANDS = {
    "serve": admin.serve,
    "caption": describe.caption,
    "recaption": describe.recaption,
    "export": library.export,
    "list": library.list_images,
    "delete": library.delete,
    "edit": edit.edit,
    "check": library.check,
    "bulk": bulk.bulk,
    "config": admin.config,
    "keys": admin.keys,
    "db": admin.db,
    "store": growth.store_copy,
    "worker": queue.worker,
    "jobs": queue.jobs,
    "import": imports.import_captions,
    "backup": backup.backup,
    "restore": backup.restore_backup,
}
