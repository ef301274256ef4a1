"""`captioner import PATH...`: captions written elsewhere, kept for the images' bytes
without running the model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.domain.errors import CaptionerError
from captioner.domain.imported import ImportedCaption
from captioner.domain.layout import IMAGE_SUFFIXES
from captioner.domain.model import ImageDigest, ImageUpload
from captioner.domain.service import CaptionService
from captioner.entrypoints.cli.output import error_message
from captioner.entrypoints.cli.services import opened_service
from captioner.sidecars.reading import (
    FoundCaption,
    UnreadableCaption,
    caption_for,
    records_in_jsonl,
)


def add_import_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "import",
        parents=[common],
        help="import captions from sidecars, image metadata or a captioner export",
        description="Keep captions already written for images, without running the model: "
        "from XMP sidecars (photo.jpg.xmp, photo.xmp), captioner JSON sidecars, XMP or EXIF "
        "ImageDescription inside the image, photo.txt or photo.caption, and the records of "
        "`captioner export` JSONL files given among the PATHs (matched to the images by "
        "SHA-256). Captions without captioner's provenance are kept as a person's. A "
        "different caption already kept is reported, never overwritten (exit 1).",
    )
    command.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    command.add_argument("-r", "--recursive", action="store_true", help="walk sub-folders")
    command.add_argument(
        "--sidecar-dir",
        type=Path,
        metavar="DIR",
        help="read sidecars from DIR, mirroring the folders given (as `caption --sidecar-dir`)",
    )


def import_captions(settings: Settings, args: argparse.Namespace) -> int:
    images, exports = _sources(args.paths, args.recursive)
    counts = {"added": 0, "unchanged": 0, "conflict": 0, "failed": 0, "none": 0}
    with opened_service(settings, args, load_model=False) as service:
        by_digest: dict[str, list[ImportedCaption]] = {}
        for export in exports:
            try:
                for _, caption in records_in_jsonl(export):
                    by_digest.setdefault(caption.sha256 or "", []).append(caption)
            except (UnreadableCaption, OSError) as error:
                counts["failed"] += 1
                print(f"captioner: {export}: {error}", file=sys.stderr)
        for image, root in images:
            for status in _import_image(service, image, root, args.sidecar_dir, by_digest):
                counts[status] += 1
    unmatched = sum(len(captions) for captions in by_digest.values())
    print(
        f"imported {counts['added']}, already kept {counts['unchanged']}, conflicts "
        f"{counts['conflict']}, failed {counts['failed']}, images without a caption "
        f"{counts['none']}"
        + (f", export records without their image {unmatched}" if unmatched else ""),
        file=sys.stderr,
    )
    return 1 if counts["conflict"] or counts["failed"] else 0


def _import_image(
    service: CaptionService,
    image: Path,
    root: Path | None,
    sidecar_dir: Path | None,
    by_digest: dict[str, list[ImportedCaption]],
) -> Iterator[str]:
    try:
        with image.open("rb") as content:
            digest = ImageDigest.of_stream(content)
        folder = None
        if sidecar_dir is not None:
            folder = sidecar_dir / image.parent.relative_to(root) if root else sidecar_dir
        found = [FoundCaption(f"export of {image}", c) for c in by_digest.pop(digest.hex, [])]
        if not found:
            beside = caption_for(image, folder)
            found = [beside] if beside is not None else []
    except (UnreadableCaption, OSError) as error:
        print(f"captioner: {image}: {error_message(error)}", file=sys.stderr)
        yield "failed"
        return
    if not found:
        yield "none"
        return
    for item in found:
        try:
            with image.open("rb") as content:
                outcome = service.import_caption(
                    ImageUpload(content=content, original_name=image.name),
                    item.caption,
                )
        except (CaptionerError, OSError) as error:
            print(f"captioner: {image}: {error_message(error)}", file=sys.stderr)
            yield "failed"
            continue
        record = outcome.record
        if outcome.status == "conflict":
            print(
                f"captioner: {image}: conflict: {record.model} already has "
                f"{record.description!r} (record {record.id}); {item.source} says "
                f"{item.caption.text!r}; kept the stored one",
                file=sys.stderr,
            )
        elif outcome.status == "added":
            print(f"{image}: {record.description} ({record.model}, from {item.source})")
        yield outcome.status


def _sources(
    paths: list[Path], recursive: bool
) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """The images to import for, each with the folder argument it was found under, and the
    JSONL exports among the paths."""
    images: list[tuple[Path, Path | None]] = []
    exports: list[Path] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.glob("**/*" if recursive else "*")):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    images.append((child, path))
                elif child.is_file() and child.suffix.lower() == ".jsonl":
                    exports.append(child)
        elif path.suffix.lower() == ".jsonl":
            exports.append(path)
        else:
            images.append((path, None))
    return images, exports
