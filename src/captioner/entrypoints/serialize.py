"""How records look outside the process (HTTP bodies, CLI JSON lines): one pydantic shape for both.

The OpenAPI document describes these same models, so the documented shape and the bodies
cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from captioner.domain.model import Description, ImageRecord, ListedImage

SHA256_PATTERN = r"^[0-9a-f]{64}$"

# ``isoformat`` keeps the "+00:00" offset the API has always written (pydantic would write "Z").
_Timestamp = Annotated[
    datetime,
    PlainSerializer(datetime.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class ImageOut(BaseModel):
    """A stored image and the description one model gave it."""

    # Exactly these fields, so the schema says so (additionalProperties: false).
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: int = Field(description="Catalogue id; newer images have larger ids.")
    description: str = Field(
        description="What the model (or a person, see source) said the image shows; empty "
        "while the caption is pending."
    )
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the image bytes.")
    path: str = Field(description="Where the file lives, relative to the data dir.")
    model: str = Field(
        description='The model that wrote the description; "person" for a person\'s edit.'
    )
    source: Literal["person", "model"] = Field(
        description='Who wrote the description: "person" (an edit: who and when are in '
        '`generation`, as `by` and `at`) or "model".'
    )
    prompt: str = Field(description="The prompt the description was asked with ('' for none).")
    created_at: _Timestamp = Field(description="When the image was first described.")
    width: int = Field(ge=1, description="Width in pixels.")
    height: int = Field(ge=1, description="Height in pixels.")
    content_type: str = Field(description="Media type, from the bytes (not the file name).")
    original_name: str | None = Field(description="The file name the client sent, if any.")
    model_revision: str | None = Field(
        description="The exact weights: the hub commit, `sha256:` of a local model directory's "
        "config and weight files, or what a model server reports; null when unknown (captions "
        "stored before revisions were kept)."
    )
    generation: dict[str, str | int | float | bool | None] = Field(
        description="The settings the caption was generated with (max_new_tokens, num_beams, "
        "prompt, ...); empty when they were not recorded."
    )
    duration_ms: float | None = Field(
        ge=0,
        description="Model time of the run that wrote the caption, in ms (a duplicate reports "
        "that original run's). Images described in one batch each report the whole batch's "
        "time. Null when not recorded.",
    )
    status: Literal["captioned", "pending", "failed"] = Field(
        description="captioned: the description is the model's; pending: queued, a worker "
        "captions it soon; failed: the model failed on it `attempts` times (`failure` says why)."
    )
    failure: str | None = Field(
        description="The model's last error on this queued image (why it failed, or why a "
        "retry is waiting); null when none."
    )
    attempts: int = Field(ge=0, description="Model runs that failed on this queued image.")


class UploadResult(ImageOut):
    """The answer to an upload: the record, and whether it came from storage."""

    duplicate: bool = Field(
        description="True when the same bytes (and prompt) were described before."
    )


class ListedImageOut(ImageOut):
    """An image in a listing: shown with its current caption (or the chosen model's)."""

    captions: int = Field(
        ge=1, description="How many captions the image has (all models and prompts)."
    )


def listed_json(entry: ListedImage) -> dict[str, Any]:
    """A listing's entry as a :class:`ListedImageOut` body: the shown caption's record."""
    fields = _image_out(entry.record).model_dump()
    return ListedImageOut(**fields, captions=entry.captions).model_dump(mode="json")


def record_json(record: ImageRecord) -> dict[str, Any]:
    """``record`` as an :class:`ImageOut` body, keys in the schema's order."""
    return _image_out(record).model_dump(mode="json")


def upload_json(description: Description) -> dict[str, Any]:
    """An upload's answer as an :class:`UploadResult` body, keys in the schema's order."""
    fields = _image_out(description.record).model_dump()
    return UploadResult(**fields, duplicate=description.duplicate).model_dump(mode="json")


def _image_out(record: ImageRecord) -> ImageOut:
    # Provenance is a value object of its own on the record; the body flattens it.
    return ImageOut(
        id=record.id,
        description=record.description,
        sha256=record.sha256,
        path=record.path,
        model=record.model,
        source=record.source,
        prompt=record.prompt,
        created_at=record.created_at,
        width=record.width,
        height=record.height,
        content_type=record.content_type,
        original_name=record.original_name,
        model_revision=record.provenance.model_revision,
        generation=dict(record.provenance.settings),
        duration_ms=record.duration_ms,
        status=record.status,
        failure=record.failure,
        attempts=record.attempts,
    )
