"""Captions already written for an image, read back for `captioner import`: its sidecars
(XMP, captioner's JSON, .txt, .caption), its embedded XMP or EXIF ImageDescription, and
the records of a captioner JSONL export."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from captioner.domain.imported import ImportedCaption
from captioner.domain.model import PERSON_MODEL, Provenance
from captioner.sidecars.files import XMP_NAMES, sidecar_name
from captioner.sidecars.xmp import XmpCaption, read_xmp

# Cameras fill EXIF ImageDescription with their own name; that is no caption.
_CAMERA_FILLERS = frozenset(
    {
        "OLYMPUS DIGITAL CAMERA",
        "SONY DSC",
        "DIGITAL CAMERA",
        "MINOLTA DIGITAL CAMERA",
        "KONICA MINOLTA DIGITAL CAMERA",
        "DEFAULT",
        "SAMSUNG",
        "<KENOX S630  / SAMSUNG S630>",
    }
)
_EXIF_IMAGE_DESCRIPTION = 0x010E


class UnreadableCaption(ValueError):
    """A file that should hold a caption could not be read as one."""


@dataclass(frozen=True)
class FoundCaption:
    """A caption and where it was read (a file, or the image's embedded metadata)."""

    source: str
    caption: ImportedCaption


def caption_for(image: Path, folder: Path | None = None) -> FoundCaption | None:
    """The first caption found for ``image``: its XMP sidecar (photo.jpg.xmp, photo.xmp),
    captioner's JSON sidecar, the XMP or EXIF ImageDescription inside it, then photo.txt and
    photo.caption; sidecars are looked for in ``folder`` (default: beside the image)."""
    folder = folder if folder is not None else image.parent
    for xmp_name in XMP_NAMES:
        path = folder / sidecar_name(image.name, "xmp", xmp_name)
        if path.is_file():
            found = from_xmp(_read(path))
            if found is not None:
                return FoundCaption(str(path), found)
    path = folder / sidecar_name(image.name, "json")
    if path.is_file():
        fields = _json_object(_read(path), str(path))
        if _is_record(fields):
            return FoundCaption(str(path), from_record(fields))
    embedded = _embedded(image)
    if embedded is not None:
        return embedded
    for text_format in ("txt", "caption"):
        path = folder / sidecar_name(image.name, text_format)
        if path.is_file():
            try:
                text = _read(path).decode("utf-8").strip()
            except UnicodeDecodeError:
                raise UnreadableCaption(f"{path} is not UTF-8 text") from None
            if text:
                return FoundCaption(str(path), ImportedCaption(text))
    return None


def from_xmp(data: bytes) -> ImportedCaption | None:
    """The packet's caption: with captioner's provenance as it was written, else a person's."""
    try:
        found = read_xmp(data)
    except ValueError as error:
        raise UnreadableCaption(str(error)) from None
    return _imported(found)


def from_record(fields: Mapping[str, Any]) -> ImportedCaption:
    """A record of `captioner export --format jsonl` (or a JSON sidecar), its provenance kept."""
    generation = fields.get("generation") or {}
    duration = fields.get("duration_ms")
    return ImportedCaption(
        text=str(fields["description"]),
        model=str(fields["model"]),
        prompt=str(fields.get("prompt") or ""),
        provenance=Provenance.of(fields.get("model_revision"), dict(generation)),
        duration_ms=float(duration) if isinstance(duration, (int, float)) else None,
        sha256=str(fields["sha256"]),
    )


def records_in_jsonl(path: Path) -> Iterator[tuple[int, ImportedCaption]]:
    """Each record of a JSONL export with its line number; a line that is no record raises."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = _json_object(line, f"{path} line {number}")
            if not _is_record(fields):
                raise UnreadableCaption(
                    f"{path} line {number} is not a captioner record "
                    "(needs description, sha256 and model)"
                )
            yield number, from_record(fields)


def _imported(found: XmpCaption) -> ImportedCaption | None:
    if not found.description:
        return None
    fields = found.provenance
    if not fields.get("Model") or fields.get("Source") not in ("model", "person"):
        return ImportedCaption(found.description)
    try:
        generation = json.loads(fields.get("Generation") or "{}")
        duration = float(fields["DurationMs"]) if fields.get("DurationMs") else None
    except ValueError:
        raise UnreadableCaption("captioner's provenance in the XMP is malformed") from None
    person = fields["Source"] == "person"
    return ImportedCaption(
        text=found.description,
        model=PERSON_MODEL if person else fields["Model"],
        prompt=fields.get("Prompt", ""),
        provenance=Provenance.of(fields.get("ModelRevision") or None, dict(generation)),
        duration_ms=duration,
        sha256=fields.get("SHA256") or None,
    )


def _embedded(image: Path) -> FoundCaption | None:
    try:
        with Image.open(image) as opened:  # reads the headers only, no pixels
            xmp = opened.info.get("xmp") or opened.info.get("XML:com.adobe.xmp")
            description = opened.getexif().get(_EXIF_IMAGE_DESCRIPTION)
    except (OSError, ValueError, SyntaxError):
        return None  # not an image: importing it fails with the decoder's reason
    if xmp:
        found = from_xmp(xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp))
        if found is not None:
            return FoundCaption(f"XMP in {image}", found)
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    if isinstance(description, str):
        text = description.strip("\x00 \t\r\n")
        if text and text.upper() not in _CAMERA_FILLERS:
            return FoundCaption(f"EXIF ImageDescription in {image}", ImportedCaption(text))
    return None


def _is_record(fields: Mapping[str, Any]) -> bool:
    return all(isinstance(fields.get(name), str) for name in ("description", "sha256", "model"))


def _json_object(data: bytes, where: str) -> dict[str, Any]:
    try:
        fields = json.loads(data)
    except ValueError:
        raise UnreadableCaption(f"{where} is not JSON") from None
    if not isinstance(fields, dict):
        raise UnreadableCaption(f"{where} is not a JSON object")
    return fields


def _read(path: Path) -> bytes:
    return path.read_bytes()
