"""The library in layouts other tools load, callable from your own code as from the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from captioner.domain.downloads import digest_name
from captioner.domain.service import CaptionService


def export_imagefolder(
    service: CaptionService, folder: str | os.PathLike[str], model: str, prompt: str = ""
) -> int:
    """The images ``model`` described with ``prompt``, and metadata.jsonl beside them: one
    line per image with ``file_name`` (relative to the folder) and ``text``, the layout
    Hugging Face datasets' ImageFolder loads (``load_dataset("imagefolder", data_dir=...)``);
    returns how many images it lists. ``prompt=""`` is the model's default prompt."""
    folder = Path(folder)
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
