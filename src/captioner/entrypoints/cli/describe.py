"""`captioner caption` and `captioner recaption`: files and stored images through the model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from captioner.config import Settings
from captioner.domain.errors import CaptionerError
from captioner.domain.model import Description, ImageDigest, ImageRecord, ImageUpload
from captioner.domain.service import MAX_KNOWN_DIGESTS, CaptionService
from captioner.entrypoints.cli.output import emit_error, progress_bar
from captioner.entrypoints.cli.services import model_loaded, opened_service
from captioner.entrypoints.serialize import upload_json

log = logging.getLogger("captioner.cli")

# Files a folder walk considers; explicit file arguments are always tried.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def caption(settings: Settings, args: argparse.Namespace) -> int:
    # The model loads only when a file is new: a folder the catalogue knows is answered from
    # one lookup, without the seconds a model takes to load.
    with opened_service(settings, args, load_model=False) as service:
        files = list(_image_files(args.paths, args.recursive, sys.stderr))
        digests = known_digests(service, files)
        new = any(isinstance(known, ImageDigest) for known in digests.values())
        if new and not model_loaded(service, settings):
            return 1
        failed = 0
        progress = progress_bar(len(files), quiet=args.json or not sys.stderr.isatty())
        # Several files in flight at once so the batcher can fill a batch; output keeps input order.
        with ThreadPoolExecutor(max_workers=settings.max_batch) as pool:
            outcomes = pool.map(lambda path: describe_file(service, path, digests.get(path)), files)
            for path, outcome in zip(files, outcomes, strict=True):
                progress.update(1)
                if isinstance(outcome, Exception):
                    failed += 1
                    emit_error(path, outcome, args.json)
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


def known_digests(
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


def describe_file(
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


def recaption(settings: Settings, args: argparse.Namespace) -> int:
    if args.dry_run:
        count = 0
        with opened_service(settings, args, load_model=False) as service:
            for record in service.waiting_for_caption(limit=args.limit):
                count += 1
                print(f"{record.id}\t{record.path}")
        print(f"{count} image(s) to caption with {settings.model}", file=sys.stderr)
        return 0
    with opened_service(settings, args, load_model=False) as service:
        # Nothing waiting: say so without loading the model. Once it has loaded, records
        # stored under another spelling of its directory are its own, so count again.
        if service.count_waiting_for_caption() == 0:
            return _nothing_to_recaption(service, settings)
        if not model_loaded(service, settings):
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
    progress = progress_bar(total, quiet=args.json or not sys.stderr.isatty())
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
        emit_error(Path(record.path), error, as_json)
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
