"""`captioner edit`: a person's caption for a stored image, kept beside the model's."""

from __future__ import annotations

import argparse
import json

from captioner.config import Settings
from captioner.entrypoints.cli.services import opened_service
from captioner.entrypoints.serialize import record_json

# Who wrote an edit made at this machine's command line (the HTTP API names the key instead).
CLI_EDITOR = "cli"


def add_edit_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """The `edit` command's flags, registered on ``commands``."""
    edit_command = commands.add_parser(
        "edit",
        parents=[common],
        help="correct the caption of a stored image",
        description="Keep TEXT as a person's caption of image ID: it is shown and searched "
        "in place of the model's, which stays among the image's captions. A second edit "
        "replaces the first; `recaption` leaves it unless told --replace-edits.",
    )
    edit_command.add_argument("id", type=int, metavar="ID")
    edit_command.add_argument("text", metavar="TEXT", help="the caption, in quotes")
    edit_command.add_argument(
        "--by",
        default=CLI_EDITOR,
        help=f"who wrote it, kept with the caption (default {CLI_EDITOR})",
    )
    edit_command.add_argument("--json", action="store_true", help="print the record as JSON")


def edit(settings: Settings, args: argparse.Namespace) -> int:
    with opened_service(settings, args, load_model=False) as service:
        record = service.edit(args.id, args.text, by=args.by)
    if args.json:
        print(json.dumps(record_json(record)))
    else:
        print(f"{record.id}\t{record.path}\t{record.description}")
    return 0
