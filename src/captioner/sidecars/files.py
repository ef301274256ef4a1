"""Where a sidecar goes and what it holds, and writing one without clobbering a person's words."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from captioner.atomic_files import write_atomically
from captioner.domain.model import ImageRecord
from captioner.entrypoints.serialize import record_json
from captioner.sidecars.xmp import UnreadableXmp, merged_xmp, read_xmp

SIDECAR_FORMATS = ("xmp", "txt", "caption", "json")
# photo.jpg.xmp keeps photo.jpg and photo.raw apart; photo.xmp is what Lightroom and
# darktable's "photo.xmp" mode write. Immich reads both.
XMP_NAMES = ("photo.jpg.xmp", "photo.xmp")
# Readable by everyone, as the photos beside them are: a photo manager may run as another user.
SIDECAR_MODE = 0o644
SIDECAR_SUFFIXES = frozenset(f".{name}" for name in SIDECAR_FORMATS)

# written: the sidecar holds the caption now; kept: an existing sidecar was left alone
# (no --overwrite); person: an XMP description a person wrote stays, never replaced;
# unreadable: an existing XMP file captioner cannot parse safely was left alone.
SidecarStatus = Literal["written", "kept", "person", "unreadable"]


@dataclass(frozen=True)
class SidecarOutcome:
    path: Path
    status: SidecarStatus


def sidecar_name(image_name: str, sidecar_format: str, xmp_name: str = XMP_NAMES[0]) -> str:
    """The sidecar's file name for an image's: photo.jpg.xmp (or photo.xmp), photo.txt,
    photo.caption, photo.json."""
    stem = image_name.rsplit(".", 1)[0] if "." in image_name else image_name
    if sidecar_format == "xmp":
        return f"{image_name}.xmp" if xmp_name == XMP_NAMES[0] else f"{stem}.xmp"
    return f"{stem}.{sidecar_format}"


def sidecars_among(files: Sequence[Path], images: Sequence[Path]) -> set[Path]:
    """Those of ``files`` that are sidecars of one of ``images`` in the same folder
    (photo.jpg.xmp, photo.xmp, photo.txt beside photo.jpg), not stray files of the same suffix."""
    image_paths = set(images)
    image_stems = {(image.parent, image.stem) for image in images}
    return {
        path
        for path in files
        if path.suffix.lower() in SIDECAR_SUFFIXES
        and (path.with_suffix("") in image_paths or (path.parent, path.stem) in image_stems)
    }


def sidecar_content(record: ImageRecord, sidecar_format: str, existing: bytes | None) -> bytes:
    """The sidecar's bytes: a text format holds the caption alone; XMP merges into
    ``existing``; JSON is the record as `captioner export` writes it."""
    if sidecar_format == "xmp":
        return merged_xmp(existing, record)
    if sidecar_format == "json":
        return (json.dumps(record_json(record), ensure_ascii=False, indent=2) + "\n").encode()
    return (record.description + "\n").encode("utf-8")


def write_sidecar(
    path: Path, record: ImageRecord, sidecar_format: str, overwrite: bool = False
) -> SidecarOutcome:
    """Write ``record``'s caption to ``path`` atomically (temp file, fsync, rename).

    An existing file stays unless ``overwrite``; an XMP file without a description gets one
    (merged: nothing it held is lost), and a description a person wrote is never replaced.
    """
    try:
        existing: bytes | None = path.read_bytes()
    except FileNotFoundError:
        existing = None
    if existing is not None and sidecar_format == "xmp":
        try:
            found = read_xmp(existing)
        except UnreadableXmp:
            return SidecarOutcome(path, "unreadable")
        if found.written_by_person:
            return SidecarOutcome(path, "person")
        if found.description and not overwrite:
            return SidecarOutcome(path, "kept")
    elif existing is not None and not overwrite:
        return SidecarOutcome(path, "kept")
    write_atomically(path, sidecar_content(record, sidecar_format, existing), SIDECAR_MODE)
    return SidecarOutcome(path, "written")
