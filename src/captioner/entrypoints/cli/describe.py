"""`captioner caption` and `captioner recaption`: files and stored images through the model."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TextIO, TypeVar

from captioner.config import Settings
from captioner.domain.errors import CaptionerError, ImageNotFound
from captioner.domain.layout import IMAGE_SUFFIXES
from captioner.domain.model import Description, ImageDigest, ImageRecord, ImageUpload
from captioner.domain.rules import MAX_KNOWN_DIGESTS
from captioner.domain.service import CaptionService
from captioner.entrypoints.cli.output import Outcomes
from captioner.entrypoints.cli.services import model_loaded, opened_service
from captioner.entrypoints.cli.sidecars import SidecarWriter
from captioner.entrypoints.serialize import upload_json
from captioner.sidecars.files import sidecars_among

log = logging.getLogger("captioner.cli")

T = TypeVar("T")
R = TypeVar("R")

# Files a folder walk considers; explicit file arguments are always tried.


def caption(settings: Settings, args: argparse.Namespace) -> int:
    # The model loads only when a file is new: a folder the catalogue knows is answered from
    # one lookup, without the seconds a model takes to load.
    with opened_service(settings, args, load_model=False) as service:
        files = list(_image_files(args.paths, args.recursive, sys.stderr))
        digests = known_digests(service, files)
        new = any(isinstance(known, ImageDigest) for known in digests.values())
        queue_only = bool(getattr(args, "no_wait", False))  # a worker captions them later
        if new and not queue_only and not model_loaded(service, settings):
            return 1
        sidecars = SidecarWriter(args) if args.sidecar else None

        def report(path: Path, outcome: Description | Exception) -> None:
            if isinstance(outcome, Exception):
                outcomes.failed(path, outcome)
            else:
                note = " (stored)" if outcome.duplicate else ""
                if not outcome.record.captioned:
                    note = f" ({outcome.record.status}: image {outcome.record.id})"
                text = f"{path}: {outcome.record.description}{note}"
                fields = {"file": str(path), **upload_json(outcome)}
                written = sidecars.write(path, outcome.record) if sidecars else None
                if written is not None:
                    fields |= {"sidecar": str(written.path), "sidecar_status": written.status}
                outcomes.succeeded(fields, text)

        def describe(path: Path) -> Description | Exception:
            return describe_file(service, path, digests.get(path), queue_only)

        with Outcomes(len(files), args.json) as outcomes:
            failed = run_concurrently(files, describe, report, settings.max_batch)
        if failed:
            print(f"captioner: {failed} of {len(files)} file(s) failed", file=sys.stderr)
            return 1
        if sidecars is not None and sidecars.failed:
            print(f"captioner: {sidecars.failed} sidecar(s) could not be written", file=sys.stderr)
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
    service: CaptionService,
    path: Path,
    known: ImageDigest | Description | None = None,
    queue_only: bool = False,
) -> Description | Exception:
    if isinstance(known, Description):
        return known
    try:
        with path.open("rb") as content:
            # No digest hint: the file may have changed since it was hashed, and the service
            # stores the bytes under the digest it is given.
            upload = ImageUpload(content=content, original_name=path.name)
            return service.submit(upload) if queue_only else service.describe(upload)
    except (CaptionerError, OSError) as error:
        return error
    except Exception as error:  # one file must not abort the others; say what broke
        log.exception("unexpected error captioning %s", path)
        return error


def _image_files(paths: Sequence[Path], recursive: bool, warnings: TextIO) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = [child for child in sorted(path.glob(pattern)) if child.is_file()]
            images = [child for child in files if child.suffix.lower() in IMAGE_SUFFIXES]
            unmentioned = sidecars_among(files, images) | set(images)
            for child in files:
                if child not in unmentioned:
                    print(f"captioner: skipping {child}: not an image file", file=warnings)
            yield from images
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

    deleted = 0  # images deleted while the run went (by a server in use): not failures

    def report(record: ImageRecord, outcome: Description | Exception) -> None:
        nonlocal deleted
        deleted += isinstance(outcome, ImageNotFound)
        if isinstance(outcome, Exception):
            if not isinstance(outcome, CaptionerError):
                log.error("unexpected error re-captioning image %d", record.id, exc_info=outcome)
            outcomes.failed(Path(record.path), outcome)
        else:
            # Keyed by the stored image, as --dry-run lists them: lines come in its id order
            # (the new records' ids follow the order the model finished in).
            text = f"{record.id}\t{record.path}\t{outcome.record.description}"
            outcomes.succeeded(upload_json(outcome), text)

    waiting = service.waiting_for_caption(limit=args.limit)
    with Outcomes(total, args.json) as outcomes:
        failed = run_concurrently(
            waiting,
            functools.partial(service.recaption, replace_edits=args.replace_edits),
            report,
            settings.max_batch,
        )
    if failed > deleted:
        print(f"captioner: {failed - deleted} image(s) failed", file=sys.stderr)
        return 1
    return 0


def run_concurrently(
    items: Iterable[T],
    work: Callable[[T], R],
    report: Callable[[T, R | Exception], None],
    workers: int,
) -> int:
    """Run ``work`` on each item in ``workers`` threads and ``report`` each outcome (its
    result, or the exception it raised or returned) in the items' order; return how many failed.

    At most two items per worker are in flight: enough for the batcher to fill its batches,
    and an interrupt leaves only those to finish.
    """
    pool = ThreadPoolExecutor(max_workers=workers)
    in_flight: deque[tuple[T, Future[R]]] = deque()
    failed = 0

    def settle_oldest() -> None:
        nonlocal failed
        item, future = in_flight.popleft()
        outcome: R | Exception
        try:
            outcome = future.result()
        except Exception as error:  # one item must not abort the others
            outcome = error
        failed += isinstance(outcome, Exception)
        report(item, outcome)

    try:
        for item in items:
            in_flight.append((item, pool.submit(work, item)))
            if len(in_flight) >= 2 * workers:
                settle_oldest()
        while in_flight:
            settle_oldest()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failed
