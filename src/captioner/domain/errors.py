"""Errors the domain raises; each entrypoint maps them to its own way of saying no."""

from __future__ import annotations

import enum


class CaptionerError(Exception):
    """Base of every error the service raises on purpose; the message is for people."""


class _Default(enum.Enum):
    """Marks "not given": None is a value of ``retry_after_s`` (permanent)."""

    RETRY_AFTER = enum.auto()


class RetryLater(CaptionerError):
    """A fault that may pass: ``retry_after_s`` says when to try again.

    None marks a permanent fault (a wrong setting, a missing bucket or directory): retrying
    cannot help until someone changes a setting and restarts, and the message says which.
    """

    default_retry_after_s: int | None = 5

    def __init__(
        self, message: str, retry_after_s: int | _Default | None = _Default.RETRY_AFTER
    ) -> None:
        super().__init__(message)
        self.retry_after_s = (
            self.default_retry_after_s if retry_after_s is _Default.RETRY_AFTER else retry_after_s
        )


class _RefusedBytes(Exception):
    """Bytes refused as an image. The message is an upload's answer; ``problem`` says what is
    wrong without the remedy and ``accepted`` names the types read, so an entrypoint that
    deals in files (the CLI) can say it in its own words. Both may be empty."""

    def __init__(self, message: str, problem: str = "", accepted: str = "") -> None:
        super().__init__(message)
        self.problem = problem
        self.accepted = accepted


class InvalidImage(_RefusedBytes, CaptionerError):
    """The bytes are not an image we can read (empty, truncated, corrupt, or not an image)."""


class UnsupportedImageType(_RefusedBytes, CaptionerError):
    """The bytes are a real file of a kind we do not accept (SVG, PDF, HTML, zip, ...)."""


class ImageTooLarge(CaptionerError):
    """The upload is bigger than the configured byte limit or pixel limit."""


class ImageNotFound(CaptionerError):
    """No image with that id."""


class StoredFileMissing(ImageNotFound):
    """The record exists but its file is gone; each entrypoint says how to repair that."""


class InvalidRequest(CaptionerError):
    """A parameter is out of range or malformed (limit, cursor, prompt, ...)."""


class CaptionerUnavailable(RetryLater):
    """The model is not loaded (still loading, or it failed to load: the message says why);
    permanent for a wrong model name or a missing directory."""

    default_retry_after_s = 10


class CaptionerBusy(RetryLater):
    """The model queue is full or a caption took longer than the configured timeout."""


class CaptioningFailed(CaptionerError):
    """The model raised while describing this image; nothing was stored."""


class NotAuthenticated(CaptionerError):
    """No API key was given, or the key is unknown or revoked; send a valid key."""


class NotAllowed(CaptionerError):
    """The API key is valid but its scope does not allow this; use a key whose scope does."""


class KeyNotFound(CaptionerError):
    """No API key with that name."""


class KeyNameTaken(CaptionerError):
    """An API key with that name exists already; pick another name or revoke the old key."""


class CopyRefused(CaptionerError):
    """A copy would mix two libraries or lose data at its destination; nothing was written."""


class CatalogueUnavailable(RetryLater):
    """The catalogue (database) cannot be reached right now; retrying later may work.
    Permanent for a wrong password, a missing database or missing privileges."""


class StorageFull(CaptionerError):
    """The image storage has no room left (disk full, disk quota or bucket quota); nothing
    was stored. Free space or raise the quota, then upload again."""


class StorageUnavailable(RetryLater):
    """The image storage cannot be written now (unreachable, throttled, read-only); nothing
    was stored. Retry after Retry-After seconds. Permanent for a bucket that does not exist
    or access denied."""

    default_retry_after_s = 10


class BackupRefused(CaptionerError):
    """A backup that cannot be taken or restored: a damaged or partial one, a target that
    holds a library already, a destination in use. The message says what to do."""
