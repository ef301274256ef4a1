"""The HTTP API's bodies and parameters as pydantic models: the source of its OpenAPI schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticUseDefault

from captioner.domain.layout import ACCEPTED_NAMES
from captioner.domain.rules import (
    DEFAULT_LIST_LIMIT,
    MAX_CAPTION_CHARS,
    MAX_IMAGE_ID,
    MAX_KNOWN_DIGESTS,
    MAX_LIST_LIMIT,
    MAX_PROMPT_CHARS,
)

# The record bodies are shared with the CLI's JSON lines: one shape, defined once.
from captioner.entrypoints.serialize import SHA256_PATTERN as SHA256_PATTERN
from captioner.entrypoints.serialize import ImageOut as ImageOut
from captioner.entrypoints.serialize import ListedImageOut as ListedImageOut
from captioner.entrypoints.serialize import UploadResult as UploadResult


def _absent_by_default(schema: dict[str, Any]) -> None:
    """For optional fields whose ``None`` means "absent": no ``null`` default in the schema."""
    schema.pop("default", None)


class _Body(BaseModel):
    """A response body: exactly these fields, so the schema says so (additionalProperties)."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Body):
    """Every 4xx and 5xx answer: what is wrong and what to do about it."""

    error: str = Field(description="What went wrong, in words meant for people.")
    hint: str | SkipJsonSchema[None] = Field(
        None,
        description="Only when an upload carried no image: how to send it, and which form "
        "field a file came in under instead.",
        json_schema_extra=_absent_by_default,
    )
    request_id: str | SkipJsonSchema[None] = Field(
        None,
        description="Only on 500s: the X-Request-ID to quote when reporting the problem.",
        json_schema_extra=_absent_by_default,
    )


class ImageList(RootModel[list[ListedImageOut]]):
    """One page of images, one entry per image, newest first (best match first when
    searching)."""


class CaptionList(RootModel[list[ImageOut]]):
    """Every caption of one image, oldest first."""


class ModelOut(_Body):
    """A model whose captions the catalogue holds."""

    model: str = Field(description="The model's name, as records carry it.")
    images: int = Field(ge=1, description="How many images it described.")
    configured: bool = Field(description="Whether it is the model this service captions with.")


class ModelList(RootModel[list[ModelOut]]):
    """Every model present, by name: the values `GET /images?model=` takes."""


class HashCheck(BaseModel):
    """The body of POST /images/check: digests of files a client has, hashed locally."""

    model_config = ConfigDict(extra="forbid")

    sha256: list[Annotated[str, Field(pattern=SHA256_PATTERN)]] = Field(
        max_length=MAX_KNOWN_DIGESTS,
        description=f"SHA-256 digests, lowercase hex; at most {MAX_KNOWN_DIGESTS}.",
        examples=[["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]],
    )


class CaptionEdit(BaseModel):
    """The body of PATCH /images/{image_id}: the caption a person wrote."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(
        max_length=MAX_CAPTION_CHARS,
        pattern=r"\S",  # not blank
        description=f"What the image shows, in the person's words: not blank, at most "
        f"{MAX_CAPTION_CHARS} characters; surrounding whitespace is dropped.",
        examples=["Two cats asleep on a red sofa"],
    )


class HashCheckResult(_Body):
    """Which digests are described already (for the current model and default prompt)."""

    known: dict[Annotated[str, Field(pattern=SHA256_PATTERN)], int] = Field(
        description="Each known digest and the id of its image."
    )
    unknown: list[Annotated[str, Field(pattern=SHA256_PATTERN)]] = Field(
        description="The digests to upload, in the order asked."
    )


class Deleted(_Body):
    """The id of the image that was removed."""

    deleted: int


class Health(_Body):
    """The process is alive."""

    status: Literal["ok"]


class Ready(_Body):
    """The model is loaded and storage is writable: uploads will be described."""

    status: Literal["ready"]
    model: str
    detail: str = Field(
        "", description="Notes from ready parts, e.g. which model servers are up or down."
    )


class NotReady(_Body):
    """Uploads would be refused now; ``reason`` says why."""

    status: Literal["not ready"]
    reason: str
    model: str
    permanent: bool = Field(
        False,
        description="True when only a change of settings and a restart can cure it (a model "
        "that failed to load, a wrong database password, a missing bucket); then there is no "
        "Retry-After.",
    )


class WorkerOut(_Body):
    """A queue worker whose heartbeat is fresh."""

    name: str = Field(description="Which machine and process (and a nonce).")
    model: str = Field(description="The model it captions with.")
    seen_s_ago: float = Field(ge=0, description="Seconds since its last heartbeat.")


class QueueOut(_Body):
    """The caption queue: records by status, how long the oldest pending one waits, workers."""

    counts: dict[str, int] = Field(description="Records by status: captioned, pending, failed.")
    pending: int = Field(ge=0, description="Captions waiting for a worker.")
    oldest_pending_age_s: float | None = Field(
        description="Seconds since the oldest pending caption was queued; null when none."
    )
    workers_alive: int = Field(ge=0, description="Workers with a fresh heartbeat.")
    workers: list[WorkerOut]


class UploadQuery(BaseModel):
    """Query parameters of POST /upload."""

    wait: bool = Field(
        True,
        examples=["false"],
        description="false: keep the image and answer 202 at once (as `Prefer: "
        "respond-async`); a worker captions it.",
    )


class UploadForm(BaseModel):
    """The multipart form of POST /upload."""

    image: bytes = Field(description=f"The image file ({ACCEPTED_NAMES}).")
    prompt: str = Field(
        "",
        description=(
            "Optional prompt: the text the description continues (BLIP, GIT), or the "
            "instruction a chat model answers, or a Florence-2 task such as <CAPTION>; at most "
            f"{MAX_PROMPT_CHARS} characters once runs of whitespace are collapsed."
        ),
    )


# A bigger id in a URL or cursor is refused here, before it reaches the service.
MAX_ID = MAX_IMAGE_ID


class ImageListQuery(BaseModel):
    """Query parameters of GET /images; an empty value means the parameter was not given."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(
        DEFAULT_LIST_LIMIT,
        ge=1,
        le=MAX_LIST_LIMIT,
        description="Most images on one page.",
        examples=[20],
    )
    before: Annotated[int, Field(ge=1, le=MAX_ID)] | SkipJsonSchema[None] = Field(
        None,
        description="Cursor: only images first uploaded before this one (from the Link "
        "header's next page).",
        examples=[120],
        json_schema_extra=_absent_by_default,
    )
    q: str = Field(
        "",
        description="Search words; every word must occur in the caption shown.",
        examples=["red bicycle"],
    )
    model: str = Field(
        "",
        description="Show this model's captions (GET /models lists them): only the images it "
        "described, each with its default-prompt caption, else its newest.",
        examples=["Salesforce/blip-image-captioning-base"],
    )

    @field_validator("limit", "before", "q", "model", mode="before")
    @classmethod
    def _blank_means_absent(cls, value: object) -> object:
        if value == "":
            raise PydanticUseDefault()
        return value


class SessionState(_Body):
    """Whether this service asks for keys, and what this browser's sign-in allows."""

    required: bool = Field(description="Whether requests must carry a key or a session.")
    signed_in: bool = Field(description="Whether this browser holds a valid sign-in session.")
    name: str | None = Field(description="The signed-in key's name.")
    scope: Literal["read", "upload", "admin", "metrics"] | None = Field(
        description="What the requests of this browser may do (admin when keys are not needed)."
    )
    allows: list[Literal["read", "upload", "admin", "metrics"]] = Field(
        description="Every scope the sign-in includes."
    )


class SignInForm(BaseModel):
    """The sign-in form: an API key, traded for an HttpOnly session cookie."""

    key: str = Field(min_length=1, description="An API key made by `captioner keys create`.")
