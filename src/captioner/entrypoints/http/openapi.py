"""OpenAPI 3.1 description of the HTTP API, built from the routes' own declarations, and /docs.

Each route says what it takes and answers with ``@documented(...)`` (pydantic models for
bodies and parameters, plus headers and non-JSON content); ``openapi_document`` walks the
app's URL map, so paths, methods and path parameters come from Flask itself and a route
cannot be served without being described. A route parses its query string with
``parse_query`` and the very model it documents. apispec assembles the document; pydantic
writes the JSON Schemas (draft 2020-12, the dialect of OpenAPI 3.1).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from apispec import APISpec
from flask import Blueprint, Flask, Response, abort, current_app, jsonify, request
from flask import send_from_directory as _send_from_directory
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

from captioner.domain.errors import InvalidRequest, NotAllowed, NotAuthenticated
from captioner.entrypoints.http.errors import status_for
from captioner.entrypoints.http.schemas import MAX_ID, ErrorBody
from captioner.entrypoints.http.scopes import SESSION_COOKIE, scope_for
from captioner.entrypoints.http.validation import (
    not_json_in_words,
    problems_in_words,
    repeated_in_words,
)

View = Callable[..., ResponseReturnValue]
Model = TypeVar("Model", bound=BaseModel)
_Refs = Mapping[tuple[type[BaseModel], JsonSchemaMode], dict[str, Any]]

OPENAPI_VERSION = "3.1.0"
_OPERATION = "__captioner_operation__"
_REF = "#/components/schemas/{model}"
_STATIC = Path(__file__).parent / "static"
# Only what the docs page loads; everything else in the bundle stays unreachable.
_SWAGGER_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
# The page runs no inline script; Swagger UI sets inline styles and uses data: images.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


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
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`captioner keys create --scope "
        "read|upload|admin|metrics`). Scopes: read (list, search, files, thumbnails) < "
        "upload < admin (delete, and everything else); metrics stands apart: /metrics only, "
        "for a Prometheus scraper. A route's security names the scope it needs; admin "
        "allows every route. Answers that needed a key are `Cache-Control: private`.",
    },
    "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "Set by POST /session, for the gallery page.",
    },
}
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


# Every route that needs a key may answer these (the 401 with WWW-Authenticate: Bearer).
ACCESS_REPLIES: dict[int, Reply] = {
    **error_replies(NotAuthenticated, NotAllowed),
    429: Reply(
        "Too many wrong keys from this address, or too many uploads with this key.",
        ErrorBody,
        headers=(RETRY_AFTER,),
    ),
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


def parse_query(model: type[Model]) -> Model:
    """The request's query string as ``model``; InvalidRequest says which parameter is wrong.

    A parameter given twice is refused rather than guessed at; so is one the model does not
    know, when the model forbids extras (a typo like ``limt=5`` should not pass unnoticed).
    """
    repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
    if repeated:
        raise InvalidRequest(repeated_in_words(repeated))
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as error:
        raise InvalidRequest(problems_in_words(model, error, "query")) from None


def parse_body(model: type[Model]) -> Model:
    """The request's JSON body as ``model``; InvalidRequest says what does not fit."""
    # Not get_json: it answers None both for no JSON and for the JSON value null.
    if not request.is_json:
        raise InvalidRequest(not_json_in_words(model, "is not JSON (Content-Type)"))
    try:
        data = json.loads(request.get_data())
    except ValueError:
        raise InvalidRequest(not_json_in_words(model, "is not valid JSON")) from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidRequest(problems_in_words(model, error, "body")) from None


def operation_of(view: Callable[..., Any]) -> Operation | None:
    found = getattr(view, _OPERATION, None)
    return found if isinstance(found, Operation) else None


def openapi_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route of ``app``."""
    routes = [
        (rule, method, operation)
        for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule)
        if (operation := operation_of(app.view_functions[rule.endpoint])) is not None
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]
    spec = APISpec(
        title="captioner",
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        info={
            "description": (
                "Upload images, get descriptions written by a Hugging Face vision-language "
                'model, then list, search, fetch and delete them. Every error is `{"error": '
                '"..."}` with a 4xx or 5xx status.'
            )
        },
        tags=[
            {"name": "images", "description": "Upload, list, search, fetch and delete images."},
            {"name": "health", "description": "Liveness and readiness probes."},
            {"name": "operations", "description": "Metrics for monitoring."},
            {"name": "access", "description": "Signing in with an API key, for the gallery."},
        ],
    )
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    refs = _register_schemas(spec, (operation for _, _, operation in routes))
    paths: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    for rule, method, operation in routes:
        path, parameters = _path_of(rule)
        _, operations = paths.setdefault(path, (parameters, {}))
        operations[method.lower()] = _operation_object(rule, operation, refs)
    for path, (parameters, operations) in paths.items():
        spec.path(path=path, operations=operations, parameters=parameters)
    return spec.to_dict()


def docs_blueprint() -> Blueprint:
    """GET /openapi.json, and GET /docs: Swagger UI from the swagger-ui-bundle package."""
    docs = Blueprint("docs", __name__)
    cache: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    @docs.get("/openapi.json")
    def openapi_json() -> Response:
        # The URL map is complete once the app serves: build the document once per app.
        with lock:
            if "document" not in cache:
                cache["document"] = openapi_document(current_app)
        return jsonify(cache["document"])

    @docs.get("/docs")
    def swagger_ui() -> Response:
        response = _send_from_directory(_STATIC, "docs.html", mimetype="text/html")
        response.headers["Content-Security-Policy"] = DOCS_CSP
        response.headers["Cache-Control"] = "no-cache"
        return response

    @docs.get("/docs/captioner-docs.js")
    def docs_script() -> Response:
        return _send_from_directory(_STATIC, "docs.js", max_age=300)

    @docs.get("/docs/swagger-ui/<name>")
    def swagger_asset(name: str) -> Response:
        if name not in _SWAGGER_ASSETS:
            abort(404, description="No such file of the docs page; the docs are at /docs.")
        return _send_from_directory(Path(str(swagger_ui_path)), name, max_age=86400)

    return docs


def _register_schemas(spec: APISpec, operations: Iterable[Operation]) -> _Refs:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for operation in operations:
        for request_model in (operation.form, operation.body):
            if request_model is not None:
                wanted[(request_model, "validation")] = None
        for reply in operation.replies.values():
            if reply.body is not None:
                wanted[(reply.body, "serialization")] = None
    refs, definitions = models_json_schema(list(wanted), ref_template=_REF)
    for name, schema in sorted(definitions.get("$defs", {}).items()):
        spec.components.schema(name, schema)
    return cast(_Refs, refs)


def _operation_object(rule: Rule, operation: Operation, refs: _Refs) -> dict[str, Any]:
    scope = scope_for(rule.endpoint)
    replies = dict(operation.replies)
    if scope is not None:
        replies.update(ACCESS_REPLIES)
    body: dict[str, Any] = {
        "operationId": rule.endpoint.rsplit(".", 1)[-1],
        "summary": operation.summary,
        "tags": list(operation.tags),
        "responses": {
            str(status): _response_object(reply, refs) for status, reply in sorted(replies.items())
        },
        # OpenAPI 3.1 lets non-OAuth schemes list roles: here, the key scope the route needs.
        "security": [] if scope is None else [{name: [scope.value]} for name in SECURITY_SCHEMES],
    }
    if operation.description:
        body["description"] = operation.description
    if operation.query is not None:
        body["parameters"] = _query_parameters(operation.query)
    if operation.form is not None:
        body["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": refs[(operation.form, "validation")]}},
        }
    if operation.body is not None:
        body["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
        }
    return body


def _response_object(reply: Reply, refs: _Refs) -> dict[str, Any]:
    content: dict[str, Any] = {key: dict(value) for key, value in reply.media.items()}
    if reply.body is not None:
        content["application/json"] = {"schema": refs[(reply.body, "serialization")]}
    response: dict[str, Any] = {
        "description": reply.description,
        "headers": {
            header.name: {
                "description": header.description,
                "required": header.required,
                "schema": dict(header.schema),
            }
            for header in (REQUEST_ID, *reply.headers)
        },
    }
    if content:
        response["content"] = content
    return response


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation", ref_template=_REF)
    required = set(schema.get("required", ()))
    parameters = []
    for name, property_schema in schema.get("properties", {}).items():
        described = dict(property_schema)
        description = described.pop("description", "")
        described.pop("title", None)
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": description,
                "schema": described,
            }
        )
    return parameters


_RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    # Flask's int converter takes any size; ids on the wire are int64 (schemas.MAX_ID).
    "int": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    "float": {"type": "number", "minimum": 0},
    "uuid": {"type": "string", "format": "uuid"},
}


def _path_of(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    parameters = [
        {
            "name": match["name"],
            "in": "path",
            "required": True,
            "schema": dict(_CONVERTER_SCHEMAS.get(match["converter"] or "", {"type": "string"})),
        }
        for match in _RULE_ARGUMENT.finditer(rule.rule)
    ]
    return _RULE_ARGUMENT.sub(r"{\g<name>}", rule.rule), parameters


def _version() -> str:
    try:
        return importlib.metadata.version("captioner")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"
