"""`captioner caption --sidecar ...`: a sidecar beside each file (or in a mirrored tree) as
it is captioned."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from captioner.domain.model import ImageRecord
from captioner.sidecars.files import (
    SIDECAR_FORMATS,
    XMP_NAMES,
    SidecarOutcome,
    sidecar_name,
    write_sidecar,
)

_NOT_WRITTEN = {
    "kept": "exists, left alone (--overwrite replaces it)",
    "person": "holds a description a person wrote; not replaced",
    "unreadable": "is not an XMP file captioner can read safely; left alone",
}


def add_sidecar_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sidecar",
        choices=SIDECAR_FORMATS,
        help="write the caption beside each file: photo.jpg.xmp (dc:description), "
        "photo.txt, photo.caption or photo.json",
    )
    parser.add_argument(
        "--sidecar-name",
        choices=XMP_NAMES,
        default=XMP_NAMES[0],
        help="how an XMP sidecar is named (default photo.jpg.xmp)",
    )
    parser.add_argument(
        "--sidecar-dir",
        type=Path,
        metavar="DIR",
        help="write sidecars under DIR, mirroring the folders given, not beside the photos",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing sidecars (an XMP description a person wrote is never replaced)",
    )


class SidecarWriter:
    """Writes each captioned file's sidecar and says on stderr which were left alone."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._format: str = args.sidecar
        self._xmp_name: str = args.sidecar_name
        self._folder: Path | None = args.sidecar_dir
        self._roots: Sequence[Path] = [p for p in args.paths if p.is_dir()]
        self._overwrite: bool = args.overwrite
        self.failed = 0

    def write(self, source: Path, record: ImageRecord) -> SidecarOutcome | None:
        target = self._folder_for(source) / sidecar_name(source.name, self._format, self._xmp_name)
        try:
            outcome = write_sidecar(target, record, self._format, self._overwrite)
        except OSError as error:
            self.failed += 1
            print(f"captioner: {target}: {error.strerror or error}", file=sys.stderr)
            return None
        if outcome.status in _NOT_WRITTEN:
            print(f"captioner: {target} {_NOT_WRITTEN[outcome.status]}", file=sys.stderr)
        return outcome

    def _folder_for(self, source: Path) -> Path:
        if self._folder is None:
            return source.parent
        for root in self._roots:  # a file found in a folder keeps its place under it
            if source.is_relative_to(root):
                return self._folder / source.parent.relative_to(root)
        return self._folder
