"""The one place errors become HTTP answers: status codes and ``{"error": ...}`` bodies."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerError,
    CaptionerUnavailable,
    CaptioningFailed,
    CatalogueUnavailable,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    KeyNameTaken,
    KeyNotFound,
    NotAllowed,
    NotAuthenticated,
    RetryLater,
    StorageFull,
    StorageUnavailable,
    StoredFileMissing,
    UnsupportedImageType,
)

log = logging.getLogger(__name__)

REPAIR_HINT = "Run `captioner check --repair` on the server."
_RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
# What each converter takes, in words, and a value to show in the example URL.
_CONVERTER_WORDS = {"int": ("a whole number, 0 or more", "12"), "float": ("a number", "1.5")}


class NoImageProvided(CaptionerError):
    """The request carried no image at all (a form without its file part).

    The message stays the seed's exact text (clients compare it); ``hint`` says how to send
    the image, and which field a file came in under when it was not ``image``.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


STATUS_BY_ERROR: dict[type[CaptionerError], int] = {
    NoImageProvided: 400,
    InvalidRequest: 400,
    NotAuthenticated: 401,
    NotAllowed: 403,
    ImageNotFound: 404,
    KeyNotFound: 404,
    KeyNameTaken: 409,
    ImageTooLarge: 413,
    UnsupportedImageType: 415,
    InvalidImage: 422,
    CaptioningFailed: 500,
    CaptionerUnavailable: 503,
    CaptionerBusy: 503,
    CatalogueUnavailable: 503,
    StorageFull: 507,
    StorageUnavailable: 503,
}


def error_response(status: int, message: str, **extra: object) -> Response:
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def _readable_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.3g} MB"
    return f"{size / 1024:.3g} KB"


def status_of(error: CaptionerError) -> int:
    return status_for(type(error))


def status_for(error: type[BaseException]) -> int:
    """The status errors of this type are answered with, by the handlers below.

    The one mapping, also used to document the answers in /openapi.json: werkzeug's errors
    keep their code, domain errors go by STATUS_BY_ERROR (400 when unlisted), anything else
    is an unexpected 500.
    """
    if issubclass(error, HTTPException):
        return error.code or 500
    if not issubclass(error, CaptionerError):
        return 500
    for kind in error.__mro__:
        if kind in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[kind]
    return 400


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CaptionerError)
    def domain_error(error: CaptionerError) -> Response:
        message = str(error)
        if isinstance(error, StoredFileMissing):
            message = f"{message} {REPAIR_HINT}"
        extra = {"hint": error.hint} if isinstance(error, NoImageProvided) and error.hint else {}
        response = error_response(status_of(error), message, **extra)
        if isinstance(error, (StorageFull, StorageUnavailable)):
            # The operator has to act (or at least know): say it in the server's log too.
            log.warning("storage fault: %s", error)
        if isinstance(error, RetryLater):
            # None marks a permanent fault: no Retry-After, so clients do not retry forever.
            if error.retry_after_s is not None:
                response.headers["Retry-After"] = str(error.retry_after_s)
        elif isinstance(error, NotAuthenticated):
            response.headers["WWW-Authenticate"] = 'Bearer realm="captioner"'
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(error: RequestEntityTooLarge) -> Response:
        limit = _readable_size(app.config.get("CAPTIONER_MAX_UPLOAD_BYTES") or 0)
        declared = request.content_length
        if declared is not None and declared > (app.config.get("MAX_CONTENT_LENGTH") or 0):
            message = (
                f"The upload is {_readable_size(declared)}; the limit is {limit}. "
                "Upload a smaller image."
            )
        else:
            # A chunked body that ran over, or a form whose other fields or parts are too big
            # (werkzeug raises the same error for all of them).
            message = (
                f"The request is too large: the image may be at most {limit}, other form "
                f"fields at most {_readable_size(app.config.get('MAX_FORM_MEMORY_SIZE') or 0)}, "
                f"in at most {app.config.get('MAX_FORM_PARTS')} parts. Upload a smaller image."
            )
        return error_response(413, message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        message = error.description or error.name
        if request.url_rule is None and isinstance(error, NotFound):
            message = _no_route(app)
        elif request.url_rule is None and isinstance(error, MethodNotAllowed):
            allowed = sorted(set(error.valid_methods or ()) - {"HEAD", "OPTIONS"})
            message = (
                f"{_shown(request.method, 20)} is not allowed on {_shown(request.path)}; it takes "
                f"{', '.join(allowed) or 'no method'}. See /docs for every route."
            )
        response = error_response(error.code or 500, message)
        for name, value in error.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        request_id = g.get("request_id", "")
        log.exception("unexpected error (request %s)", request_id)
        return error_response(500, "internal error", request_id=request_id)


def _no_route(app: Flask) -> str:
    """Why nothing answers this path: a route of its shape whose parameter has the wrong
    form (``/images/abc``: the id is a number), or no route of that shape at all."""
    segments = request.path.split("/")
    for rule in app.url_map.iter_rules():
        template = rule.rule.split("/")
        if len(template) != len(segments):
            continue
        wrong = []
        for part, given in zip(template, segments, strict=True):
            argument = _RULE_ARGUMENT.fullmatch(part)
            if argument is None:
                if part != given:
                    break
            elif argument["converter"] in _CONVERTER_WORDS:
                wrong.append((argument["name"], argument["converter"], given))
        else:
            if not wrong:
                continue
            name, converter, given = wrong[0]
            words, example = _CONVERTER_WORDS[converter]
            shape = _RULE_ARGUMENT.sub(r"<\g<name>>", rule.rule)
            sample = _RULE_ARGUMENT.sub(example, rule.rule)
            return f"{shape} takes {words} as {name}, e.g. {sample}; got {given[:60]!r}."
    return (
        f"No route {_shown(request.method, 20)} {_shown(request.path)}; see /docs for every route."
    )


def _shown(text: str, most: int = 100) -> str:
    """A client's text, quoted when odd and cut when long: it goes into an error message."""
    if len(text) <= most and text.isprintable() and "'" not in text:
        return text
    shown = repr(text)
    return shown if len(shown) <= most else f"{shown[: most - 3]}..."
