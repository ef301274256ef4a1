"""Which model the setting names: whether this machine has it, and the revision that made
its captions."""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

# What decides a local model's captions: its configuration and its weights.
_MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt")


class ModelNotFound(Exception):
    """The model setting names nothing this machine has: a local directory that does not
    exist, or a hub id absent from the cache while offline. ``advice`` says what to change."""

    def __init__(self, message: str, advice: str) -> None:
        super().__init__(message)
        self.advice = advice


def looks_like_a_path(model: str) -> bool:
    """Whether the model setting means a local directory rather than a hub id: it starts
    with ``.``, ``/`` or ``~``, ends with a slash, or its first component is a local
    directory (``models/blip-bse`` beside ``models/``)."""
    if model.startswith((".", "/", "~")) or model.endswith(("/", "\\")):
        return True
    first = Path(model).parts[0] if Path(model).parts else ""
    return "/" in model and bool(first) and Path(first).is_dir()


def check_model_exists(model: str) -> None:
    """Raise ModelNotFound, saying what is there instead, when the model cannot be found."""
    if Path(model).expanduser().is_dir():
        return
    if looks_like_a_path(model):
        raise ModelNotFound(
            _no_such_directory(model),
            "set CAPTIONER_MODEL to a directory saved with save_pretrained, and restart",
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.is_offline_mode():
        return  # the hub answers for itself (an unknown id, no network...)
    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid hub id at all
        cached = None
    if not isinstance(cached, str):
        raise ModelNotFound(
            f"{model} is not in this machine's Hugging Face cache, and HF_HUB_OFFLINE is set, "
            "so it cannot be downloaded",
            "download it once with the network on (HF_HUB_OFFLINE unset), or set "
            "CAPTIONER_MODEL to a local model directory, and restart",
        )


def _no_such_directory(model: str) -> str:
    given = Path(model.rstrip("/\\") or model).expanduser()
    message = f"no such model directory: {given.absolute()}"
    parent = given.parent
    shown = f"{model.rstrip('/').rsplit('/', 1)[0]}/" if "/" in model.rstrip("/") else "./"
    if not parent.is_dir():
        return f"{message} ({shown} does not exist either)"
    present = sorted(child.name for child in parent.iterdir() if child.is_dir())
    near = difflib.get_close_matches(given.name, present, n=3, cutoff=0.6)
    listed = near or present[:8]
    if listed:
        return f"{message} ({shown} has: {', '.join(listed)})"
    return f"{message} ({shown} has no directories)"


def model_revision(model: str) -> str | None:
    """The hub commit of the cached snapshot the weights load from, or for a local directory
    ``sha256:`` of its configuration and weight files (names and bytes, so any change shows)."""
    directory = Path(model)
    if not directory.is_dir():
        from transformers.utils.hub import cached_file, extract_commit_hash

        # The snapshot folder the config resolved to is named by the commit it holds.
        return extract_commit_hash(cached_file(model, "config.json"), None)
    digest = hashlib.sha256()
    files = sorted({path for pattern in _MODEL_FILES for path in directory.glob(pattern)})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as content:
            while chunk := content.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
