"""The `captioner` command: serve the API, caption files, re-caption, list, export, delete
and check storage."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from captioner.config import Settings, canonical_model_name
from captioner.container import Container, build_container, opened
from captioner.domain.access import AccessService, ApiKey, Scope, parse_scope
from captioner.domain.errors import (
    CaptionerError,
    CaptionerUnavailable,
    ImageNotFound,
    InvalidImage,
    StoredFileMissing,
    UnsupportedImageType,
)
from captioner.domain.layout import IMAGE_SUFFIXES
from captioner.domain.model import Description, ImageDigest, ImageRecord, ImageUpload
from captioner.domain.rules import MAX_KNOWN_DIGESTS
from captioner.domain.service import CaptionService
from captioner.domain.storage_check import ORPHAN_GRACE_S, StorageProblem
from captioner.entrypoints.logs import configure_logging
from captioner.entrypoints.serialize import listed_json, record_json, upload_json

log = logging.getLogger("captioner.cli")

REPAIR_HINT = "Run `captioner check --repair` to drop records whose file is gone."

# Files a folder walk considers; explicit file arguments are always tried.

# Builds the container for one command: (settings, load_model). Tests pass one that overrides
# providers with fakes; the CLI itself uses build_container.
ContainerFactory = Callable[[Settings, bool], Container]

# Commands that only work on a library that exists; the others (serve, caption, keys create,
# db upgrade) start one when there is none.
_NEEDS_A_LIBRARY = {"list", "export", "check", "delete", "recaption"}
_KEYS_NEEDING_A_LIBRARY = {"list", "revoke"}


def main(argv: Sequence[str] | None = None, containers: ContainerFactory = build_container) -> int:
    parser = _parser()
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
        print(f"captioner: {_error_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _missing_library(settings: Settings, args: argparse.Namespace) -> str | None:
    """Why a command that reads the library cannot run here (no catalogue), or None.

    With ``database_url`` the PostgreSQL database is the catalogue: opening it says whether
    it is there. Without, the SQLite file in the data dir is; a command that only reads must
    not create an empty one in whatever directory it was run from.
    """
    reads = args.command in _NEEDS_A_LIBRARY or (
        args.command == "keys" and args.keys_command in _KEYS_NEEDING_A_LIBRARY
    )
    if not reads or settings.database_url or settings.database_path.is_file():
        return None
    return (
        f"no library in {settings.data_dir.resolve()} (no {settings.database_path.name} "
        "there). Point at yours with --data-dir DIR or CAPTIONER_DATA_DIR=DIR; "
        "`captioner caption` or `captioner serve` starts a new one."
    )


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from captioner.entrypoints.server import serve

    with _access(settings, args) as access:
        problem = access.startup_problem()
    if problem is not None:
        print(f"captioner: {problem}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    with _access(settings, args) as access:
        _manage_keys(access, args)
    return 0


def _manage_keys(access: AccessService, args: argparse.Namespace) -> None:
    if args.keys_command == "create":
        issued = access.create_key(parse_scope(args.scope), args.name)
        print(f"Created API key {issued.key.name!r} with scope {issued.key.scope.value}.")
        print("It is shown only this once; keep it somewhere safe:")
        print(issued.secret)
    elif args.keys_command == "list":
        for key in access.list_keys():
            used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
            if args.json:
                print(json.dumps(_key_json(key)))
            else:
                print(f"{key.name}\t{key.scope.value}\t{key.created_at:%Y-%m-%d %H:%M}\t{used}")
    else:
        access.revoke_key(args.name)
        print(f"Revoked API key {args.name!r}.")


def _key_json(key: ApiKey) -> dict[str, str | None]:
    return {
        "name": key.name,
        "scope": key.scope.value,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


@contextlib.contextmanager
def _access(settings: Settings, args: argparse.Namespace) -> Iterator[AccessService]:
    """The API keys for one command; the database closes when it is done."""
    with opened(args.containers(settings, False)) as container:
        yield container.access()


def _caption(settings: Settings, args: argparse.Namespace) -> int:
    # The model loads only when a file is new: a folder the catalogue knows is answered from
    # one lookup, without the seconds a model takes to load.
    with _service(settings, args, load_model=False) as service:
        files = list(_image_files(args.paths, args.recursive, sys.stderr))
        digests = _known_digests(service, files)
        new = any(isinstance(known, ImageDigest) for known in digests.values())
        if new and not _model_loaded(service, settings):
            return 1
        failed = 0
        progress = _progress(len(files), quiet=args.json or not sys.stderr.isatty())
        # Several files in flight at once so the batcher can fill a batch; output keeps input order.
        with ThreadPoolExecutor(max_workers=settings.max_batch) as pool:
            outcomes = pool.map(
                lambda path: _describe_file(service, path, digests.get(path)), files
            )
            for path, outcome in zip(files, outcomes, strict=True):
                progress.update(1)
                if isinstance(outcome, Exception):
                    failed += 1
                    _emit_error(path, outcome, args.json)
                elif args.json:
                    print(json.dumps({"file": str(path), **upload_json(outcome)}), flush=True)
                else:
                    note = " (stored)" if outcome.duplicate else ""
                    progress.write(f"{path}: {outcome.record.description}{note}")
        progress.close()
        if failed:
            print(f"captioner: {failed} of {len(files)} file(s) failed", file=sys.stderr)
            return 1
        return 0


def _known_digests(
    service: CaptionService, files: Sequence[Path]
) -> dict[Path, ImageDigest | Description]:
    """Each readable file's digest, or its stored description when the service knows it:
    those files are answered without being read again or decoded."""
    digests: dict[Path, ImageDigest] = {}
    for path in files:
        try:
            with path.open("rb") as content:
                digests[path] = ImageDigest.of_stream(content)
        except OSError:
            continue  # reported when the file is described
    unique = list(dict.fromkeys(digest.hex for digest in digests.values()))
    records: dict[str, ImageRecord] = {}
    for start in range(0, len(unique), MAX_KNOWN_DIGESTS):
        records.update(service.known(unique[start : start + MAX_KNOWN_DIGESTS]).records)
    return {
        path: Description(records[digest.hex], duplicate=True) if digest.hex in records else digest
        for path, digest in digests.items()
    }


def _describe_file(
    service: CaptionService, path: Path, known: ImageDigest | Description | None = None
) -> Description | Exception:
    if isinstance(known, Description):
        return known
    try:
        with path.open("rb") as content:
            # No digest hint: the file may have changed since it was hashed, and the service
            # stores the bytes under the digest it is given.
            return service.describe(ImageUpload(content=content, original_name=path.name))
    except (CaptionerError, OSError) as error:
        return error
    except Exception as error:  # one file must not abort the others; say what broke
        log.exception("unexpected error captioning %s", path)
        return error


def _recaption(settings: Settings, args: argparse.Namespace) -> int:
    if args.dry_run:
        count = 0
        with _service(settings, args, load_model=False) as service:
            for record in service.waiting_for_caption(limit=args.limit):
                count += 1
                print(f"{record.id}\t{record.path}")
        print(f"{count} image(s) to caption with {settings.model}", file=sys.stderr)
        return 0
    with _service(settings, args, load_model=False) as service:
        # Nothing waiting: say so without loading the model. Once it has loaded, records
        # stored under another spelling of its directory are its own, so count again.
        if service.count_waiting_for_caption() == 0:
            return _nothing_to_recaption(service, settings)
        if not _model_loaded(service, settings):
            return 1
        return _recaption_all(service, settings, args)


def _nothing_to_recaption(service: CaptionService, settings: Settings) -> int:
    done = sum(1 for _ in service.export(model=settings.model, prompt=settings.prompt))
    prompt = f" with the prompt {settings.prompt!r}" if settings.prompt else ""
    print(
        f"captioner: nothing to do: all {done} image(s) have a caption by {settings.model}{prompt}",
        file=sys.stderr,
    )
    return 0


def _recaption_all(service: CaptionService, settings: Settings, args: argparse.Namespace) -> int:
    total = service.count_waiting_for_caption()
    if total == 0:
        return _nothing_to_recaption(service, settings)
    if args.limit is not None:
        total = min(total, args.limit)
    progress = _progress(total, quiet=args.json or not sys.stderr.isatty())
    failed = 0
    # A bounded window of images in flight: enough to fill batches, and an interrupt leaves
    # only those to finish (each is stored whole, so a rerun skips it).
    window: deque[tuple[ImageRecord, Future[Description]]] = deque()
    pool = ThreadPoolExecutor(max_workers=settings.max_batch)
    try:
        for record in service.waiting_for_caption(limit=args.limit):
            window.append((record, pool.submit(service.recaption, record)))
            if len(window) >= 2 * settings.max_batch:
                failed += _report_recaption(*window.popleft(), progress, args.json)
        while window:
            failed += _report_recaption(*window.popleft(), progress, args.json)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    if failed:
        print(f"captioner: {failed} image(s) failed", file=sys.stderr)
        return 1
    return 0


def _report_recaption(
    record: ImageRecord, outcome: Future[Description], progress: Any, as_json: bool
) -> int:
    try:
        result = outcome.result()
    except Exception as error:  # one image must not abort the run; say what broke
        if not isinstance(error, CaptionerError):
            log.exception("unexpected error re-captioning image %d", record.id)
        _emit_error(Path(record.path), error, as_json)
        return 1
    finally:
        progress.update(1)
    if as_json:
        print(json.dumps(upload_json(result)), flush=True)
    else:
        # Keyed by the stored image, as --dry-run lists them: lines come in its id order
        # (the new records' ids follow the order the model finished in).
        progress.write(f"{record.id}\t{record.path}\t{result.record.description}")
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    with _service(settings, args, load_model=False) as service:
        return _export_from(service, settings, args)


def _export_from(service: CaptionService, settings: Settings, args: argparse.Namespace) -> int:
    if args.hf_imagefolder is not None:
        written = export_imagefolder(service, args.hf_imagefolder, settings.model, settings.prompt)
        print(f"wrote {written} image(s) and metadata.jsonl to {args.hf_imagefolder}")
        if written == 0:
            return _nothing_matched(service, settings.model, settings.prompt)
        return 0
    model = canonical_model_name(args.model) if args.model is not None else None
    records = service.export(model=model, prompt=args.prompt)
    written = 0
    if args.format == "csv":
        writer: Any = None
        for record in records:
            written += 1
            row = record_json(record)
            row["generation"] = json.dumps(row["generation"], sort_keys=True)
            if writer is None:
                writer = csv.DictWriter(sys.stdout, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    else:
        for record in records:
            written += 1
            sys.stdout.write(json.dumps(record_json(record)) + "\n")
    sys.stdout.flush()
    if written == 0 and (model is not None or args.prompt is not None):
        return _nothing_matched(service, model, args.prompt)
    return 0


def _nothing_matched(service: CaptionService, model: str | None, prompt: str | None) -> int:
    """A filter that matched nothing is an error a script notices (exit 1), naming what the
    library does hold so the next try can be right."""
    held: dict[str, set[str]] = {}
    for record in service.export():
        held.setdefault(record.model, set()).add(record.prompt)
    asked = " and ".join(
        part
        for part in (
            f"model {model}" if model is not None else "",
            f"prompt {prompt!r}" if prompt is not None else "",
        )
        if part
    )
    if not held:
        print(f"captioner: no captions by {asked}: the library is empty", file=sys.stderr)
        return 1
    print(f"captioner: no captions by {asked}; the library holds captions by:", file=sys.stderr)
    for name in sorted(held):
        prompts = ", ".join(repr(p) if p else "(default prompt)" for p in sorted(held[name]))
        print(f"  {name}  prompts: {prompts}", file=sys.stderr)
    return 1


def export_imagefolder(service: CaptionService, folder: Path, model: str, prompt: str) -> int:
    """The images ``model`` described with ``prompt``, and metadata.jsonl beside them: one
    line per image with ``file_name`` (relative to the folder) and ``text``, the layout
    Hugging Face datasets' ImageFolder loads (``load_dataset("imagefolder", data_dir=...)``)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "metadata.jsonl.partial"
    written = 0
    with partial.open("w", encoding="utf-8") as metadata:
        for record in service.export(model=model, prompt=prompt):
            file_name = f"{record.sha256}.{record.path.rsplit('.', 1)[-1]}"
            target = folder / file_name
            if not target.exists():  # named by content: an existing file has these bytes
                _, original = service.open_file(record.id)
                with original, (folder / (file_name + ".partial")).open("wb") as copy:
                    shutil.copyfileobj(original, copy)
                os.replace(folder / (file_name + ".partial"), target)
            line = {
                "file_name": file_name,
                "text": record.description,
                "sha256": record.sha256,
                "model": record.model,
                "model_revision": record.provenance.model_revision,
                "prompt": record.prompt,
            }
            metadata.write(json.dumps(line) + "\n")
            written += 1
    os.replace(partial, folder / "metadata.jsonl")
    return written


def _list(settings: Settings, args: argparse.Namespace) -> int:
    with _service(settings, args, load_model=False) as service:
        model = canonical_model_name(args.model) if args.model else None
        page = service.list(limit=args.limit, before=args.before, query=args.search, model=model)
    if not page.entries:
        if args.search:
            note = f"no images match {args.search!r}"
        elif args.before is not None:
            note = f"no images before id {args.before}"
        elif model:
            note = f"no images described by {model}"
        else:
            note = f"the library in {settings.data_dir.resolve()} is empty"
            if settings.database_url:
                note = "the library is empty"
        # A line for people; --json keeps stdout to JSON objects.
        print(f"captioner: {note}", file=sys.stderr if args.json else sys.stdout)
    for entry in page.entries:
        record = entry.record
        if args.json:
            print(json.dumps(listed_json(entry)))
        else:
            print(
                f"{record.id}\t{record.created_at:%Y-%m-%d %H:%M}\t{record.model}\t"
                f"{record.description}"
            )
    return 0


def _delete(settings: Settings, args: argparse.Namespace) -> int:
    with _service(settings, args, load_model=False) as service:
        missing = []
        for image_id in args.ids:
            try:
                record = service.delete(image_id)
            except ImageNotFound as error:
                missing.append(image_id)
                print(f"captioner: {error}", file=sys.stderr)
                continue
            print(f"deleted {record.id} ({record.path})")
        if missing:
            print(
                f"captioner: {len(missing)} of {len(args.ids)} id(s) not found: "
                + " ".join(map(str, missing)),
                file=sys.stderr,
            )
            return 1
        return 0


def _check(settings: Settings, args: argparse.Namespace) -> int:
    with _service(settings, args, load_model=False) as service:
        found: list[tuple[StorageProblem, str | None]] = []

        def report_problem(problem: StorageProblem) -> None:
            print(
                f"{problem.kind}\t{problem.path}"
                + (f"\trecord {problem.record_id}" if problem.record_id is not None else "")
            )
            found.append((problem, _sha256_of(service, problem)))

        report = service.check(
            repair=args.repair, orphan_grace_s=args.orphan_grace, on_problem=report_problem
        )
        if report.repaired:
            for problem, sha256 in found:
                print(_removal(problem, sha256))
        verdict = "no problems" if report.ok else f"{len(report.problems)} problem(s)"
        action = ", repaired" if report.repaired and not report.ok else ""
        print(
            f"checked {report.files_seen} files, {report.records_seen} records: {verdict}{action}"
        )
        return 0 if report.ok or report.repaired else 1


def _sha256_of(service: CaptionService, problem: StorageProblem) -> str | None:
    """The digest of the bytes a problem is about (read before a repair removes its record)."""
    if problem.kind == "orphan_thumbnail":
        return problem.path  # a thumbnail is named by its digest
    if problem.record_id is None:
        stem = problem.path.rsplit("/", 1)[-1].split(".", 1)[0]
        return stem if len(stem) == 64 else None  # stored files are named by their digest
    try:
        return service.get(problem.record_id).sha256
    except ImageNotFound:  # deleted meanwhile
        return None


_REMOVAL_REASONS = {
    "missing_file": "its file is missing",
    "hash_mismatch": "its file's bytes no longer match its SHA-256 (the file goes too unless "
    "another record uses it)",
    "orphan_file": "no record uses it",
    "orphan_thumbnail": "no record has those bytes",
}


def _removal(problem: StorageProblem, sha256: str | None) -> str:
    """One line saying what a repair removed and why: what, id, SHA-256 prefix, path."""
    digest = f"sha256 {sha256[:12]}" if sha256 else "sha256 unknown"
    reason = _REMOVAL_REASONS.get(problem.kind, problem.kind)
    if problem.record_id is not None:
        what = f"record {problem.record_id} ({digest}, {problem.path})"
    elif problem.kind == "orphan_thumbnail":
        what = f"thumbnail ({digest})"
    else:
        what = f"file {problem.path} ({digest})"
    return f"removed {what}: {reason}"


def _config(settings: Settings, args: argparse.Namespace) -> int:
    if args.table:
        print(settings_table())
        return 0
    if args.json:
        print(json.dumps(settings.for_display(), indent=2))
    else:
        for name, value in settings.for_display().items():
            print(f"{name} = {value!r}")
    return 0


def _db(settings: Settings, args: argparse.Namespace) -> int:
    # Opening the catalogue applies its migrations (under the migration lock on PostgreSQL).
    with opened(args.containers(settings, False)) as container:
        version = getattr(container.repository(), "schema_version", "unknown")
    where = "PostgreSQL" if settings.database_url else str(settings.database_path)
    print(f"database {where} is at schema version {version}")
    return 0


def settings_table() -> str:
    """The README's configuration table, generated from the Settings class."""
    lines = ["| Setting | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for name, env, default, meaning in Settings.table_rows():
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| `{name}` | `{env}` | {shown} | {meaning} |")
    return "\n".join(lines)


@contextlib.contextmanager
def _service(
    settings: Settings, args: argparse.Namespace, load_model: bool = True
) -> Iterator[CaptionService]:
    """The service for one command; the model worker and database close when it is done.

    ``load_model=False``: the model loads when ``wait_until_ready`` is first called.
    """
    containers: ContainerFactory = args.containers
    with opened(containers(settings, load_model)) as container:
        yield container.service()


def _model_loaded(service: CaptionService, settings: Settings) -> bool:
    """Load the model, saying so on stderr; False (the reason printed) when it cannot load."""
    print(f"captioner: loading model {settings.model}...", file=sys.stderr, flush=True)
    try:
        readiness = service.wait_until_ready()
    except CaptionerUnavailable as failed:  # the model failed to load: the message says why
        print(f"captioner: {failed}", file=sys.stderr)
        return False
    if not readiness.ready:
        print(f"captioner: {readiness.reason}", file=sys.stderr)
    return readiness.ready


def _image_files(paths: Sequence[Path], recursive: bool, warnings: TextIO) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            for child in sorted(path.glob(pattern)):
                if not child.is_file():
                    continue
                if child.suffix.lower() in IMAGE_SUFFIXES:
                    yield child
                else:
                    print(f"captioner: skipping {child}: not an image file", file=warnings)
        else:
            yield path


class _Quiet:
    """Stands in for a progress bar when output must stay parseable or is not a terminal."""

    def update(self, count: int) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, quiet: bool) -> Any:
    if quiet:
        return _Quiet()
    from tqdm import tqdm

    bar = tqdm(total=total, unit="image", file=sys.stderr)
    return _Bar(bar)


class _Bar:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, count: int) -> None:
        self._bar.update(count)

    def write(self, line: str) -> None:
        self._bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self._bar.close()


def _error_message(error: Exception) -> str:
    """What to print for ``error``: the domain's message, plus what to run where the CLI
    knows the remedy (the domain does not name commands)."""
    if isinstance(error, StoredFileMissing):
        return f"{error} {REPAIR_HINT}"
    if isinstance(error, (InvalidImage, UnsupportedImageType)) and error.problem:
        # The decoder's words are an upload's ("Upload a JPEG..."); a command names files.
        if isinstance(error, InvalidImage) and error.accepted:
            return f"{error.problem} Check it opens in an image viewer; it was skipped."
        accepted = error.accepted or "image"
        return f"{error.problem} captioner reads {accepted} files; it was skipped."
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _emit_error(path: Path, error: Exception, as_json: bool) -> None:
    message = _error_message(error)
    if as_json:
        print(json.dumps({"file": str(path), "error": message}), flush=True)
    print(f"captioner: {path}: {message}", file=sys.stderr)


_COMMANDS = {
    "serve": _serve,
    "caption": _caption,
    "recaption": _recaption,
    "export": _export,
    "list": _list,
    "delete": _delete,
    "check": _check,
    "config": _config,
    "keys": _keys,
    "db": _db,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioner",
        description="Describe images with a Hugging Face model; keep them and their captions.",
        epilog="Every setting is also an environment variable CAPTIONER_<NAME>; "
        "see `captioner config`.",
    )
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
        "--prompt",
        help="what to ask: the start of the caption for BLIP and GIT, the instruction for chat "
        "models, a task such as <CAPTION> for Florence-2 (CAPTIONER_PROMPT)",
    )

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

    export = commands.add_parser(
        "export",
        parents=[common],
        help="write every record as JSON Lines or CSV, or an image folder",
        description="Print every record (oldest first) with its provenance, streamed; or "
        "with --hf-imagefolder write the images and a metadata.jsonl that Hugging Face "
        "datasets' ImageFolder loads.",
    )
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--model", help="only captions by this model")
    export.add_argument("--prompt", help="only captions asked with this prompt")
    export.add_argument(
        "--hf-imagefolder",
        type=Path,
        metavar="DIR",
        help="write the images the model (--model, else CAPTIONER_MODEL) described with the "
        "prompt (--prompt, else CAPTIONER_PROMPT) into DIR, with metadata.jsonl",
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

    config = commands.add_parser(
        "config",
        parents=[common, with_model],
        help="print the settings in effect",
        description="Print the settings in effect (defaults < config file < env < flags).",
    )
    config.add_argument("--json", action="store_true", help="as JSON")
    config.add_argument(
        "--table", action="store_true", help="every setting as a Markdown table (the README's)"
    )
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
