"""The OpenAPI 3.1 document of an app, built from its URL map and its routes' declarations."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

from apispec import APISpec
from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import Rule

from captioner.domain.errors import NotAllowed, NotAuthenticated
from captioner.entrypoints.http.openapi.declare import (
    REQUEST_ID,
    RETRY_AFTER,
    Operation,
    Reply,
    error_replies,
    operation_of,
)
from captioner.entrypoints.http.schemas import MAX_ID, ErrorBody
from captioner.entrypoints.http.scopes import SESSION_COOKIE, scope_for

_Refs = Mapping[tuple[type[BaseModel], JsonSchemaMode], dict[str, Any]]

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
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

# Every route that needs a key may answer these (the 401 with WWW-Authenticate: Bearer).
ACCESS_REPLIES: dict[int, Reply] = {
    **error_replies(NotAuthenticated, NotAllowed),
    429: Reply(
        "Too many wrong keys from this address, or too many uploads with this key.",
        ErrorBody,
        headers=(RETRY_AFTER,),
    ),
}


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
            {"name": "queue", "description": "Captions waiting for a worker, and the workers."},
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
