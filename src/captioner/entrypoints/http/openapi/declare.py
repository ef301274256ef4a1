"""The declaration DSL routes describe themselves with: headers, replies, ``@documented``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException

from captioner.entrypoints.http.errors import status_for
from captioner.entrypoints.http.schemas import ErrorBody

View = Callable[..., ResponseReturnValue]

_OPERATION = "__captioner_operation__"


@dataclass(frozen=True)
class Header:
    """A response header an answer carries."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """One documented answer: a JSON body (a model), other media, and headers."""

    description: str
    body: type[BaseModel] | None = None
    media: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers; the route's docstring gives summary and description."""

    summary: str
    description: str
    tags: tuple[str, ...]
    replies: Mapping[int, Reply]
    query: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    body: type[BaseModel] | None = None


REQUEST_ID = Header(
    "X-Request-ID",
    "The request's id: the client's X-Request-ID when it is a short token, else a new one.",
    {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$"},
    required=True,
)
RETRY_AFTER = Header(
    "Retry-After",
    "Seconds to wait before trying again.",
    {"type": "string", "pattern": r"^\d+$"},
    required=True,
)
# A 503 for a permanent fault (a setting must change) carries none: retrying cannot help.
RETRY_AFTER_UNLESS_PERMANENT = Header(
    "Retry-After",
    "Seconds to wait before trying again; absent when the fault is permanent (the message "
    "says which setting to change).",
    {"type": "string", "pattern": r"^\d+$"},
)
NEXT_PAGE = Header(
    "Link",
    'The next page, as `<URL>; rel="next"`; absent on the last page and when searching.',
    {"type": "string", "pattern": r'^<[^>]+>; rel="next"$'},
)
ETAG = Header("ETag", "The image's SHA-256, quoted.", required=True)
CACHE_CONTROL = Header(
    "Cache-Control",
    "Images never change: cache them for a year (`max-age=31536000, immutable`). `public` "
    "when the service needs no key; `private` when it does, so proxies and CDNs keep no "
    "copy and only the key holder's browser caches it.",
    required=True,
)
CONTENT_DISPOSITION = Header(
    "Content-Disposition",
    '`inline`, named as uploaded (else by SHA-256): `filename="..."` (an ASCII '
    "look-alike) and, when the name is not plain ASCII, `filename*=UTF-8''...` (RFC 6266).",
    required=True,
)
VARY = Header(
    "Vary",
    "When the service needs a key: `Authorization, X-API-Key, Cookie`, the headers a key "
    "comes in, so a browser's cache keeps one copy per key.",
)
BINARY = {"schema": {"type": "string", "format": "binary"}}
UNEXPECTED = "An unexpected error; quote its request_id when reporting it."


def error_replies(*errors: type[Exception]) -> dict[int, Reply]:
    """The ``{"error": ...}`` answers to these errors, by the status errors.py gives them.

    The status comes from errors.py's ``status_for``, the function the error handlers use;
    each answer is described by the docstrings of the errors behind it.
    """
    causes: dict[int, list[str]] = {}
    for error in errors:
        text = error.description if issubclass(error, HTTPException) else error.__doc__
        doc = " ".join((text or "").split())
        causes.setdefault(status_for(error), []).append(f"{error.__name__}: {doc}")
    return {
        status: Reply(
            " ".join(texts),
            ErrorBody,
            headers=(RETRY_AFTER_UNLESS_PERMANENT,) if status == 503 else (),
        )
        for status, texts in sorted(causes.items())
    }


def _with_unexpected(replies: Mapping[int, Reply]) -> dict[int, Reply]:
    """Any route may fail unexpectedly: every operation documents the 500 answer."""
    known = replies.get(500)
    if known is None:
        return {**replies, 500: Reply(UNEXPECTED, ErrorBody)}
    return {**replies, 500: Reply(f"{known.description} {UNEXPECTED}", ErrorBody)}


def documented(
    *,
    tags: Iterable[str],
    replies: Mapping[int, Reply],
    query: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
) -> Callable[[View], View]:
    """Describe a route for /openapi.json; it changes nothing about how the route runs.

    ``query``, ``body`` and ``form`` only document: the route parses its query string
    itself with ``parse_query(model)`` and its JSON body with ``parse_body(model)``, and the
    upload route reads its multipart form while it is spooled and hashed.
    """

    def decorate(view: View) -> View:
        summary, _, description = (inspect.getdoc(view) or view.__name__).partition("\n")
        operation = Operation(
            summary=summary.strip(),
            description=description.strip(),
            tags=tuple(tags),
            replies=_with_unexpected(replies),
            query=query,
            form=form,
            body=body,
        )
        setattr(view, _OPERATION, operation)
        return view

    return decorate


def operation_of(view: Callable[..., Any]) -> Operation | None:
    found = getattr(view, _OPERATION, None)
    return found if isinstance(found, Operation) else None
