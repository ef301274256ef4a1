"""The bulk plan's stages as functions over batches (column name -> list), so the Ray engine
and the one-process engine run the same steps: list, read and hash, look up, caption."""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.errors import CaptionerError
from captioner.domain.layout import IMAGE_SUFFIXES
from captioner.domain.model import Description, ImageDigest, ImageRecord, ImageUpload
from captioner.domain.rules import MAX_KNOWN_DIGESTS
from captioner.domain.service import CaptionService

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# A batch: column name -> one value per image. Ray hands numpy arrays; lists work the same.
Batch = dict[str, Any]
# Builds the container of a worker: (settings, load_model); tests override providers in it.
ContainerFactory = Callable[[Settings, bool], Container]

CATALOGUE = "catalogue:"
S3_PREFIX = "s3://"
# The columns a bulk run writes to Parquet beside the catalogue.
OUTPUT_COLUMNS = ("sha256", "path", "caption", "model", "prompt", "provenance", "status")
STAGES = ("read_s", "lookup_s", "caption_s")
# Images per read task and per model-actor call: small enough that a retried batch repeats
# little, large enough that a batch keeps the model's batcher full.
READ_BATCH = 32


def list_sources(
    sources: Sequence[str], settings: Settings, containers: ContainerFactory
) -> list[str]:
    """Every image the run considers, once, as the path the read stage opens: a file, an
    ``s3://bucket/key``, or ``catalogue:<record id>`` (stored images the model has not
    described with the prompt)."""
    listed = (path for source in sources for path in _listed(source, settings, containers))
    return list(dict.fromkeys(listed))


def _listed(source: str, settings: Settings, containers: ContainerFactory) -> list[str]:
    if source.startswith(CATALOGUE):
        service = service_of(settings, containers, load_model=False)
        return [f"{CATALOGUE}{record.id}" for record in service.waiting_for_caption()]
    if source.startswith(S3_PREFIX):
        bucket, _, prefix = source[len(S3_PREFIX) :].partition("/")
        pages = (
            _s3(settings, containers)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix)
        )
        return [
            f"{S3_PREFIX}{bucket}/{item['Key']}"
            for page in pages
            for item in page.get("Contents", [])
            if Path(item["Key"]).suffix.lower() in IMAGE_SUFFIXES
        ]
    root = Path(source)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder, bucket or catalogue: {source}")
    return [
        str(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]


def read_batch(batch: Batch, settings: Settings, containers: ContainerFactory) -> Batch:
    """Read each image's bytes and hash them; a file that cannot be read is marked failed."""
    started = time.perf_counter()
    paths = [str(path) for path in batch["path"]]
    contents: list[bytes] = []
    digests: list[str] = []
    errors: list[str] = []
    for path in paths:
        try:
            content = _read(path, settings, containers)
        except (OSError, CaptionerError, ValueError) as error:
            contents.append(b"")
            digests.append("")
            errors.append(f"cannot read: {error}")
            continue
        except Exception as error:  # e.g. botocore's ClientError: one image, never the run
            contents.append(b"")
            digests.append("")
            errors.append(f"cannot read: {error}")
            continue
        contents.append(content)
        digests.append(hashlib.sha256(content).hexdigest())
        errors.append("")
    return {
        "path": paths,
        "bytes": contents,
        "sha256": digests,
        "error": errors,
        "read_s": shared_seconds(started, len(paths)),
    }


def lookup_batch(batch: Batch, settings: Settings, containers: ContainerFactory) -> Batch:
    """Ask the catalogue about the batch's digests in one query each ``MAX_KNOWN_DIGESTS``;
    known bytes leave the plan here, never decoded or sent to a model."""
    started = time.perf_counter()
    service = service_of(settings, containers, load_model=False)
    digests = [str(sha) for sha in batch["sha256"]]
    asked = list(dict.fromkeys(sha for sha in digests if sha))
    found: dict[str, Any] = {}
    for start in range(0, len(asked), MAX_KNOWN_DIGESTS):
        found.update(service.known(asked[start : start + MAX_KNOWN_DIGESTS]).records)
    statuses, captions, record_ids, contents, provenances = [], [], [], [], []
    for sha, error, content in zip(digests, batch["error"], batch["bytes"], strict=True):
        record = found.get(sha)
        if error:
            statuses.append("failed")
        elif record is not None:
            statuses.append("known")
        else:
            statuses.append("new")
        captions.append(record.description if record is not None else "")
        record_ids.append(record.id if record is not None else 0)
        provenances.append(_provenance_json(record) if record is not None else "")
        contents.append(bytes(content) if statuses[-1] == "new" else b"")
    return {
        **{name: list(batch[name]) for name in ("path", "sha256", "error", "read_s")},
        "bytes": contents,
        "status": statuses,
        "caption": captions,
        "record_id": record_ids,
        "provenance": provenances,
        "lookup_s": shared_seconds(started, len(digests)),
    }


class CaptionBatches:
    """A model worker: one service (model, store, catalogue) for its life; each batch's new
    images go through ``describe_many``, the upload's rules with the catalogue's writes
    batched, so claims hold across everything that writes to the catalogue and a retried
    batch finds its earlier records."""

    def __init__(self, settings: Settings, containers: ContainerFactory = build_container) -> None:
        self._service = service_of(settings, containers, load_model=True)
        self._service.wait_until_ready()
        self._model = self._service.model_name
        self._prompt = settings.prompt
        # Claimed, captioned and written as many at a time as the model batches: a lost
        # actor loses at most one model batch's captions.
        self._model_batch = max(1, settings.max_batch)

    def __call__(self, batch: Batch) -> Batch:
        started = time.perf_counter()
        began = time.time()
        rows = list(
            zip(batch["path"], batch["sha256"], batch["bytes"], batch["status"], strict=True)
        )
        outcomes = self._describe(rows)
        statuses, captions, record_ids, errors, provenances = [], [], [], [], []
        earlier = zip(
            batch["caption"], batch["record_id"], batch["error"], batch["provenance"], strict=True
        )
        for (_, _, _, status), outcome, (caption, record_id, error, provenance) in zip(
            rows, outcomes, earlier, strict=True
        ):
            if isinstance(outcome, Description):
                statuses.append("known" if outcome.duplicate else "captioned")
                captions.append(outcome.record.description)
                record_ids.append(outcome.record.id)
                errors.append("")
                provenances.append(_provenance_json(outcome.record))
            else:
                statuses.append("failed" if outcome is not None or status == "failed" else status)
                captions.append(str(caption))
                record_ids.append(int(record_id))
                errors.append(str(outcome) if outcome is not None else str(error))
                provenances.append(str(provenance) if outcome is None else "")
        return {
            **{name: list(batch[name]) for name in ("path", "sha256", "read_s", "lookup_s")},
            "status": statuses,
            "caption": captions,
            "record_id": record_ids,
            "error": errors,
            "model": [self._model] * len(rows),
            "prompt": [self._prompt] * len(rows),
            "provenance": provenances,
            "caption_s": shared_seconds(started, len(rows)),
            # Wall clock, comparable across processes: the summary's span of captioning.
            "caption_began": [began] * len(rows),
            "caption_ended": [time.time()] * len(rows),
        }

    def _describe(
        self, rows: list[tuple[Any, Any, Any, Any]]
    ) -> list[Description | Exception | None]:
        """Each row's outcome; None for rows that were not new (known, or failed to read)."""
        new = [index for index, (_, _, _, status) in enumerate(rows) if status == "new"]
        described = self._service.describe_many(
            [
                ImageUpload(
                    content=io.BytesIO(bytes(rows[index][2])),
                    original_name=_name_of(str(rows[index][0])),
                    digest=ImageDigest(str(rows[index][1])),
                )
                for index in new
            ],
            batch=self._model_batch,
        )
        outcomes: list[Description | Exception | None] = [None] * len(rows)
        for index, outcome in zip(new, described, strict=True):
            if isinstance(outcome, Exception) and not isinstance(outcome, CaptionerError):
                log.error("unexpected error captioning %s", rows[index][0], exc_info=outcome)
            outcomes[index] = outcome  # one image's failure is reported, never the run's
        return outcomes


@dataclass
class Summary:
    """What a bulk run did: counts by outcome, seconds spent per stage, and each failure."""

    read: int = 0
    known: int = 0
    captioned: int = 0
    failed: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    # From the first model batch's start to the last one's end: the run without its start-up
    # (Ray's, the model's load), the same span for every engine.
    caption_began: float = math.inf
    caption_ended: float = 0.0

    def add(self, batch: Batch) -> None:
        for index, status in enumerate(batch["status"]):
            self.read += 1
            if status == "known":
                self.known += 1
            elif status == "captioned":
                self.captioned += 1
            else:
                self.failed += 1
                self.failures.append((str(batch["path"][index]), str(batch["error"][index])))
            for stage in STAGES:
                self.stage_s[stage] += float(batch[stage][index])
        if len(batch["status"]):
            self.caption_began = min(self.caption_began, *map(float, batch["caption_began"]))
            self.caption_ended = max(self.caption_ended, *map(float, batch["caption_ended"]))

    @property
    def images_per_s(self) -> float:
        return self.read / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def captioning_s(self) -> float:
        return max(0.0, self.caption_ended - self.caption_began)

    @property
    def started_images_per_s(self) -> float:
        """Images/s once the first model batch began: start-up excluded."""
        return self.read / self.captioning_s if self.captioning_s > 0 else 0.0

    def lines(self) -> list[str]:
        stages = ", ".join(
            f"{stage[:-2]} {seconds:.1f}s" for stage, seconds in self.stage_s.items()
        )
        return [
            f"{self.read} read, {self.known} known, {self.captioned} captioned, "
            f"{self.failed} failed in {self.wall_s:.1f}s ({self.images_per_s:.1f} images/s)",
            f"captioning took {self.captioning_s:.1f}s of it ({self.started_images_per_s:.1f} "
            "images/s once started)",
            f"time per stage (summed over workers): {stages}",
            *(f"failed: {path}: {error}" for path, error in self.failures),
        ]


def output_rows(batch: Batch) -> Batch:
    """The Parquet columns of a finished batch (``path`` is the source the image came from)."""
    return {name: list(batch[name]) for name in OUTPUT_COLUMNS}


def batches(items: Sequence[str], size: int) -> Iterator[Batch]:
    for start in range(0, len(items), size):
        yield {"path": list(items[start : start + size])}


# One service per worker process for the stages that run as plain tasks (list, read,
# look up): opening the catalogue per batch would cost a connection and a schema check.
_services: dict[tuple[int, Settings, bool], tuple[Container, CaptionService]] = {}


def service_of(
    settings: Settings, containers: ContainerFactory, load_model: bool
) -> CaptionService:
    key = (id(containers), settings, load_model)
    if key not in _services:
        container = containers(settings, load_model)
        _services[key] = (container, container.service())
    return _services[key][1]


def close_services() -> None:
    """Close what the cached services opened (database pools, model workers)."""
    while _services:
        _, (container, _service) = _services.popitem()
        try:
            container.shutdown_resources()
        except Exception:  # closing at exit: nothing left to tell
            log.debug("closing a bulk service failed", exc_info=True)


atexit.register(close_services)


def _read(path: str, settings: Settings, containers: ContainerFactory) -> bytes:
    if path.startswith(CATALOGUE):
        service = service_of(settings, containers, load_model=False)
        _, content = service.open_file(int(path[len(CATALOGUE) :]))
        with content:
            return content.read()
    if path.startswith(S3_PREFIX):
        bucket, _, key = path[len(S3_PREFIX) :].partition("/")
        return _s3(settings, containers).get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(path).read_bytes()


def _s3(settings: Settings, containers: ContainerFactory) -> S3Client:
    """The container's S3 client (the standard AWS settings), also for a source bucket."""
    service_of(settings, containers, load_model=False)
    container, _ = _services[(id(containers), settings, False)]
    client: S3Client = container.s3_client()
    return client


def _provenance_json(record: ImageRecord) -> str:
    """The record's provenance as the API shows it: the weights' revision and the settings."""
    provenance = record.provenance
    return json.dumps(
        {"model_revision": provenance.model_revision, "generation": provenance.settings},
        sort_keys=True,
    )


def _name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def shared_seconds(started: float, count: int) -> list[float]:
    """A batch's seconds, shared evenly among its images (summed again in the summary)."""
    return [(time.perf_counter() - started) / max(1, count)] * count
