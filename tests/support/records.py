"""New catalogue rows for repository tests, named by a short tag that becomes their digest."""

from __future__ import annotations

from captioner.domain.model import NewImageRecord

# A record's keys in the order the API and the CLI's JSON lines write them: the wire contract,
# spelled out once (derived from the code, a test of the order would test nothing).
RECORD_KEYS = [
    "id",
    "description",
    "sha256",
    "path",
    "model",
    "source",
    "prompt",
    "created_at",
    "width",
    "height",
    "content_type",
    "original_name",
    "model_revision",
    "generation",
    "duration_ms",
    "status",
    "failure",
    "attempts",
]


def new_record(
    sha: str, description: str = "a cat on a mat", model: str = "m", prompt: str = ""
) -> NewImageRecord:
    """A row for ``sha`` (one character is repeated into a digest; 64 are used as they are)."""
    return NewImageRecord(
        sha256=sha * 64 if len(sha) == 1 else sha,
        path=f"uploads/{sha}.png",
        description=description,
        model=model,
        prompt=prompt,
        width=10,
        height=20,
        content_type="image/png",
        original_name="photo.png",
    )
