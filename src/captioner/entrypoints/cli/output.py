"""What the `captioner` command prints besides results: progress, and errors in a file's
terms (with the remedy where the command knows it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from captioner.domain.errors import InvalidImage, StoredFileMissing, UnsupportedImageType

REPAIR_HINT = "Run `captioner check --repair` to drop records whose file is gone."


class Outcomes:
    """Each item's outcome as it is settled: its result line on stdout, or its error on stderr
    (and as a JSON line with --json), under a progress bar when stderr is a terminal."""

    def __init__(self, total: int, as_json: bool) -> None:
        self._as_json = as_json
        quiet = as_json or not sys.stderr.isatty()  # output a program reads gets no bar
        self._bar = tqdm(total=total, unit="image", file=sys.stderr, disable=quiet)

    def succeeded(self, fields: dict[str, Any], text: str) -> None:
        self._bar.update(1)
        _say(json.dumps(fields) if self._as_json else text)

    def failed(self, path: Path, error: Exception) -> None:
        self._bar.update(1)
        _emit_error(path, error, self._as_json)

    def __enter__(self) -> Outcomes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()


def _say(line: str) -> None:
    """A result line on stdout, clear of the bar and flushed so a pipe sees each at once."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


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


def _emit_error(path: Path, error: Exception, as_json: bool) -> None:
    message = error_message(error)
    if as_json:
        _say(json.dumps({"file": str(path), "error": message}))
    tqdm.write(f"captioner: {path}: {message}", file=sys.stderr)
