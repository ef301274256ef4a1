"""The `captioner` command line: every command, its flags and their help."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner import __version__
from captioner.domain.access import Scope
from captioner.domain.storage_check import ORPHAN_GRACE_S
from captioner.entrypoints.cli import backup, bulk
from captioner.entrypoints.cli.edit import add_edit_parser
from captioner.entrypoints.cli.exporting import add_export_arguments
from captioner.entrypoints.cli.imports import add_import_parser
from captioner.entrypoints.cli.sidecars import add_sidecar_arguments


def add_queue_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    with_model: argparse.ArgumentParser,
) -> None:
    """`worker` and `jobs`: the caption queue."""
    commands.add_parser(
        "worker",
        parents=[common, with_model],
        help="caption the queue (no HTTP), beside servers sharing the catalogue and store",
        description="Caption queued images until SIGTERM: batches taken under leases from the "
        "catalogue (database_url) and read from the store (store_url) the servers share. "
        "Liveness: a heartbeat row in the catalogue (GET /queue, captioner jobs).",
    )
    jobs = commands.add_parser(
        "jobs",
        parents=[common],
        help="list, retry or cancel queued captions",
        description="The caption queue: pending and failed captions, oldest first.",
    )
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="pending and failed captions")
    for parser in (jobs, listing):
        parser.add_argument("--json", action="store_true", help="one JSON object per line")
        parser.add_argument("--failed", action="store_true", help="only failed ones")
        parser.add_argument("--pending", action="store_true", help="only pending ones")
        parser.add_argument("--limit", type=int, default=1000, help="how many (default 1000)")
    retry = actions.add_parser("retry", parents=[common], help="queue failed captions again")
    retry.add_argument("id", nargs="?", type=int, metavar="ID")
    retry.add_argument("--failed", action="store_true", help="every failed caption")
    cancel = actions.add_parser("cancel", parents=[common], help="take a pending caption off")
    cancel.add_argument("id", type=int, metavar="ID")


def add_copy_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    database_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """`db copy` and `store copy`: moving a library to PostgreSQL and S3, and back."""
    copy = database_commands.add_parser(
        "copy",
        parents=[common],
        help="copy the catalogue into another database (SQLite to PostgreSQL and back)",
        description="Copy every record, caption, edit, key and session, with their ids and "
        "times, into the catalogue that --to names (migrated first), a batch per transaction; "
        "run it again to continue a stopped copy or to take what was written since. Prints "
        "each table's rows and checksum, read again from both sides; exit status 1 when they "
        "differ.",
    )
    copy.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="postgresql://user:password@host:port/db, or a data dir (its SQLite file)",
    )
    copy.add_argument(
        "--prune",
        action="store_true",
        help="delete rows the target has and the source no longer does (deleted since)",
    )
    copy.add_argument("--batch", type=int, default=500, help="rows per transaction (500)")
    store = commands.add_parser(
        "store",
        help="manage the image store",
        description="Manage the image files (the data dir, or S3 with store_url).",
    )
    store_commands = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    store_copy = store_commands.add_parser(
        "copy",
        parents=[common],
        help="copy the image files into another store (disk to S3 and back)",
        description="Copy every image file, create-only and SHA-256 checked, into the store "
        "that --to names; files already there with the right digest are skipped, so it can be "
        "run again. Exit status 1 when a file was damaged.",
    )
    store_copy.add_argument(
        "--to", required=True, metavar="URL", help="s3://bucket/prefix, or a data dir"
    )
    store_copy.add_argument(
        "--thumbnails", action="store_true", help="make the source's thumbnails there too"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioner",
        description="Describe images with a Hugging Face model; keep them and their captions.",
        epilog="Every setting is also an environment variable CAPTIONER_<NAME>; "
        "see `captioner config`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="data directory (CAPTIONER_DATA_DIR)")
    common.add_argument("--config", type=Path, help="TOML config file (CAPTIONER_CONFIG)")
    with_model = argparse.ArgumentParser(add_help=False)
    with_model.add_argument(
        "--model", help="Hugging Face model id or local directory (CAPTIONER_MODEL)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common, with_model],
        help="run the HTTP API",
        description="Run the HTTP API (gunicorn, threads) until interrupted.",
    )
    serve.add_argument("--host", help="listen address (CAPTIONER_HOST)")
    serve.add_argument("--port", type=int, help="listen port (CAPTIONER_PORT)")
    serve.add_argument(
        "--no-model",
        action="store_true",
        default=None,
        help="load no model: `captioner worker` captions the uploads (CAPTIONER_NO_MODEL)",
    )

    caption = commands.add_parser(
        "caption",
        parents=[common, with_model],
        help="caption image files or folders",
        description="Caption files and folders through the service: results are stored, "
        "and bytes seen before are answered from storage.",
    )
    caption.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    caption.add_argument("--json", action="store_true", help="one JSON object per line")
    caption.add_argument("-r", "--recursive", action="store_true", help="walk sub-folders")
    caption.add_argument(
        "--no-wait", action="store_true", help="queue new files; a worker captions them later"
    )
    caption.add_argument(
        "--prompt",
        help="what to ask: the start of the caption for BLIP and GIT, the instruction for chat "
        "models, a task such as <CAPTION> for Florence-2 (CAPTIONER_PROMPT)",
    )
    add_sidecar_arguments(caption)
    add_import_parser(commands, common)

    recaption = commands.add_parser(
        "recaption",
        parents=[common],
        help="caption every stored image with another model or prompt",
        description="Caption every stored image with MODEL (and PROMPT), keeping the old "
        "captions. Images already done are skipped, so an interrupted run resumes where it "
        "stopped, and several runs at once share the work.",
    )
    recaption.add_argument(
        "--model", required=True, help="Hugging Face model id or local directory"
    )
    recaption.add_argument("--prompt", help="caption with this prompt (CAPTIONER_PROMPT)")
    recaption.add_argument("--limit", type=int, help="at most this many images in this run")
    recaption.add_argument(
        "--dry-run", action="store_true", help="list the images that would be captioned"
    )
    recaption.add_argument("--json", action="store_true", help="one JSON object per line")
    recaption.add_argument(
        "--replace-edits",
        action="store_true",
        help="drop a person's caption of each image captioned, so the model's new one is shown",
    )
    add_edit_parser(commands, common)

    export = commands.add_parser(
        "export",
        parents=[common],
        help="write every record as JSON Lines or CSV, an image folder, shards or sidecars",
        description="Print every record (oldest first) with its provenance, streamed; or "
        "with --hf-imagefolder write the images and a metadata.jsonl that Hugging Face "
        "datasets' ImageFolder loads.",
    )
    add_export_arguments(export)
    export.add_argument("--model", help="only captions by this model")
    export.add_argument("--prompt", help="only captions asked with this prompt")
    export.add_argument(
        "--hf-imagefolder",
        type=Path,
        metavar="DIR",
        help="write the images the model (--model, else CAPTIONER_MODEL) described with the "
        "prompt (--prompt, else CAPTIONER_PROMPT) into DIR/train (--split), with "
        "metadata.jsonl",
    )

    listing = commands.add_parser(
        "list",
        parents=[common],
        help="list stored images, newest first",
        description="List stored images, one line per image with its current caption (the "
        "configured model's with the default prompt, else the newest), newest first, or best "
        "match with --search. Columns: id, date, model, caption.",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--search", metavar="WORDS", help="words to find in captions")
    listing.add_argument("--limit", type=int, default=100, help="how many (default 100)")
    listing.add_argument(
        "--before", type=int, help="only images first uploaded before this image id"
    )
    listing.add_argument(
        "--model",
        metavar="M",
        help="show M's captions (only the images M described) instead of each image's "
        "current caption",
    )

    delete = commands.add_parser(
        "delete",
        parents=[common],
        help="delete stored images by id",
        description="Delete images by id: every caption of the image (all models and prompts), "
        "its file and its thumbnail.",
    )
    delete.add_argument("ids", nargs="+", type=int, metavar="ID")

    check = commands.add_parser(
        "check",
        parents=[common],
        help="check files and database agree",
        description="Report orphan files and thumbnails, records whose file is missing, and "
        "files whose bytes no longer match their SHA-256. Exit 1 when problems remain.",
    )
    check.add_argument("--repair", action="store_true", help="remove orphans and broken records")
    check.add_argument(
        "--orphan-grace",
        type=float,
        default=ORPHAN_GRACE_S,
        metavar="SECONDS",
        help="ignore files without a record younger than this: uploads in flight on a "
        f"running server (default {ORPHAN_GRACE_S:g})",
    )

    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="API keys for the HTTP API and the gallery; only their hashes are kept.",
    )
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = key_commands.add_parser(
        "create",
        parents=[common],
        help="make a key; it is printed once, as the last line",
        description="Make a new random key and print it once, as the last line of output.",
    )
    create.add_argument(
        "--scope",
        required=True,
        choices=[scope.value for scope in Scope],
        help="read: list, search, view; upload: read + upload; admin: everything; "
        "metrics: scrape /metrics, nothing else (for Prometheus)",
    )
    create.add_argument("--name", help="a name to list and revoke it by (default: made up)")
    key_list = key_commands.add_parser(
        "list", parents=[common], help="name, scope, created, last used (never the key)"
    )
    key_list.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = key_commands.add_parser(
        "revoke",
        parents=[common],
        help="revoke a key by name, at once on every server sharing the database",
    )
    revoke.add_argument("name", metavar="NAME")

    database = commands.add_parser(
        "db",
        parents=[common],
        help="manage the catalogue database",
        description="Manage the catalogue database (SQLite, or PostgreSQL with database_url).",
    )
    database_commands = database.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    database_commands.required = True
    database_commands.add_parser(
        "upgrade",
        parents=[common],
        help="apply pending schema migrations",
        description="Apply pending schema migrations and print the schema version. Servers "
        "also do this at start; several starting at once apply each migration once.",
    )

    backup.add_parsers(commands, common)
    add_copy_commands(commands, database_commands, common)
    add_queue_commands(commands, common, with_model)
    bulk.add_parser(commands, common)

    config = commands.add_parser(
        "config",
        parents=[common, with_model],
        help="print the settings in effect",
        description="Print the settings in effect (defaults < config file < env < flags).",
    )
    config.add_argument("--json", action="store_true", help="as JSON")
    config.add_argument(
        "--table",
        action="store_true",
        help="every setting as a Markdown table (docs/configuration.md's)",
    )
    return parser
