"""What the `captioner` command prints besides results: progress, and errors in a file's
terms (with the remedy where the command knows it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from captioner.domain.errors import InvalidImage, StoredFileMissing, UnsupportedImageType

REPAIR_HINT = "Run `captioner check --repair` to drop records whose file is gone."


class _Quiet:
    """Stands in for a progress bar when output must stay parseable or is not a terminal."""

    def update(self, count: int) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, quiet: bool) -> Any:
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


def error_message(error: Exception) -> str:
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


def emit_error(path: Path, error: Exception, as_json: bool) -> None:
    message = error_message(error)
    if as_json:
        print(json.dumps({"file": str(path), "error": message}), flush=True)
    print(f"captioner: {path}: {message}", file=sys.stderr)
