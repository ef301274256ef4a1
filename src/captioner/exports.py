"""The library in layouts other tools load, callable from your own code as from the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from captioner.atomic_files import write_atomically
from captioner.domain.downloads import digest_name, download_name
from captioner.domain.model import ListedImage
from captioner.domain.rules import MAX_LIST_LIMIT
from captioner.domain.service import CaptionService
from captioner.entrypoints.serialize import record_json
from captioner.sidecars.files import SIDECAR_MODE, sidecar_content, sidecar_name


def export_imagefolder(
    service: CaptionService,
    folder: str | os.PathLike[str],
    model: str,
    prompt: str = "",
    split: str = "train",
) -> int:
    """The images ``model`` described with ``prompt``, and metadata.jsonl beside them in the
    split folder ``folder/split``: one line per image with ``file_name`` (relative to the
    split folder) and ``text``, the layout Hugging Face datasets' ImageFolder loads
    (``load_dataset("imagefolder", data_dir=folder)``); returns how many images it lists.
    ``prompt=""`` is the model's default prompt.

    A split folder because some datasets versions ignore a metadata.jsonl at the top
    (datasets #6442) while every version finds one inside a split folder.
    """
    folder = Path(folder) / split
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "metadata.jsonl.partial"
    written = 0
    with partial.open("w", encoding="utf-8") as metadata:
        for record in service.export(model=model, prompt=prompt):
            file_name = digest_name(record)
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
                "source": record.source,  # "person" where someone corrected the caption
                "model_revision": record.provenance.model_revision,
                "prompt": record.prompt,
            }
            metadata.write(json.dumps(line) + "\n")
            written += 1
    os.replace(partial, folder / "metadata.jsonl")
    return written


def export_sidecars(
    service: CaptionService,
    folder: str | os.PathLike[str],
    sidecar_format: str = "xmp",
    model: str | None = None,
) -> int:
    """A sidecar per stored image in ``folder`` (xmp, txt, caption or json), holding the
    caption the listing shows for it (``model``'s only, when given); returns how many.

    Each is named after the image's original name where no other image has that name (so
    it drops in beside the photo: photo.jpg.xmp, photo.txt), else after its SHA-256. An
    existing file is replaced, an XMP one merged into (its other fields kept).
    """
    folder = Path(folder)
    names = Counter(download_name(listed.record) for listed in _listed(service, model))
    written = 0
    for listed in _listed(service, model):
        record = listed.record
        image_name = download_name(record)
        if names[image_name] > 1:
            image_name = digest_name(record)
        target = folder / sidecar_name(image_name, sidecar_format)
        existing = target.read_bytes() if target.is_file() else None
        write_atomically(target, sidecar_content(record, sidecar_format, existing), SIDECAR_MODE)
        written += 1
    return written


@dataclass(frozen=True)
class Shard:
    """One tar shard of a WebDataset export: its name, samples, size and SHA-256."""

    name: str
    samples: int
    bytes: int
    sha256: str


def export_webdataset(
    service: CaptionService,
    folder: str | os.PathLike[str],
    shard_size: int = 1000,
    model: str | None = None,
) -> list[Shard]:
    """Tar shards 000000.tar, 000001.tar, ... of ``shard_size`` samples each: per stored image
    ``<sha256>.<ext>`` (its bytes), ``<sha256>.txt`` (the caption the listing shows) and
    ``<sha256>.json`` (the record), as WebDataset reads them; then manifest.json with each
    shard's sample count and SHA-256. Streamed: one image in memory at a time."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[Shard] = []
    writer: _ShardWriter | None = None
    for listed in _listed(service, model):
        if writer is None:
            writer = _ShardWriter(folder, f"{len(shards):06d}.tar")
        record, image = service.open_file(listed.record.id)
        with image:
            data = image.read()
        key = record.sha256
        writer.add(f"{key}.{record.path.rsplit('.', 1)[-1]}", data)
        writer.add(f"{key}.txt", record.description.encode("utf-8"))
        writer.add(f"{key}.json", json.dumps(record_json(record), ensure_ascii=False).encode())
        if writer.samples == shard_size:
            shards.append(writer.close())
            writer = None
    if writer is not None:
        shards.append(writer.close())
    manifest = {
        "format": "webdataset",
        "shard_size": shard_size,
        "samples": sum(shard.samples for shard in shards),
        "shards": [dataclasses.asdict(shard) for shard in shards],
    }
    write_atomically(folder / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return shards


class _ShardWriter:
    """A tar written as a stream (no seeking back), hashed as it goes, renamed when whole."""

    def __init__(self, folder: Path, name: str) -> None:
        self._target = folder / name
        self._partial = folder / (name + ".partial")
        self._file = self._partial.open("wb")
        self._hash = hashlib.sha256()
        self._size = 0
        # Closed by close(), once the shard is whole.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=cast(BinaryIO, self), mode="w|", format=tarfile.PAX_FORMAT
        )
        self.samples = 0
        self._members = 0

    def write(self, data: bytes) -> int:  # tarfile's stream mode only writes
        self._hash.update(data)
        self._size += len(data)
        return self._file.write(data)

    def add(self, name: str, data: bytes) -> None:
        member = tarfile.TarInfo(name)
        member.size = len(data)
        member.mode = 0o644
        self._tar.addfile(member, io.BytesIO(data))
        self._members += 1
        self.samples = self._members // 3

    def close(self) -> Shard:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self._target)
        return Shard(self._target.name, self.samples, self._size, self._hash.hexdigest())


def _listed(service: CaptionService, model: str | None) -> Iterator[ListedImage]:
    """Every stored image with the caption the listing shows for it, page by page."""
    before: int | None = None
    while True:
        page = service.list(limit=MAX_LIST_LIMIT, before=before, model=model)
        yield from page.entries
        if page.next_before is None:
            return
        before = page.next_before
