"""How records look outside the process (HTTP bodies, CLI JSON lines): one shape for both."""

from __future__ import annotations

from typing import Any

from captioner.domain.model import ImageRecord


def record_json(record: ImageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "description": record.description,
        "sha256": record.sha256,
        "path": record.path,
        "model": record.model,
        "prompt": record.prompt,
        "created_at": record.created_at.isoformat(),
        "width": record.width,
        "height": record.height,
        "content_type": record.content_type,
        "original_name": record.original_name,
        "model_revision": record.provenance.model_revision,
        "generation": record.provenance.settings,
        "duration_ms": record.duration_ms,
    }
