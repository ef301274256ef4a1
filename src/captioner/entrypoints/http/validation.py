"""Refused parameters and bodies in words: which one is wrong, what it should be, an example.

pydantic's own messages name its types and classes ("constrained-int", "instance of
HashCheck"); a client needs ``before: must be a whole number from 1 to ..., e.g. before=120``.
What a value should be is read from the model's JSON Schema, the one /openapi.json shows, so
the message and the documentation cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from captioner.entrypoints.serialize import SHA256_PATTERN

Where = Literal["query", "body"]
# Enough to see what was sent; a junk value of any length must not make the answer huge.
_SHOWN_CHARS = 40
_MOST_PROBLEMS = 5


def problems_in_words(model: type[BaseModel], error: ValidationError, where: Where) -> str:
    """One ``<name>: <what is wrong>, e.g. <example>`` per wrong parameter or field."""
    schema = model.model_json_schema(mode="validation")
    properties: Mapping[str, Any] = schema.get("properties", {})
    said: dict[str, str] = {}
    for problem in error.errors(include_url=False):
        # The field, then list indices; other names after the field are pydantic's names
        # for the branches of a union ("constrained-int"), not part of the request.
        loc = problem["loc"]
        location = [*loc[:1], *(part for part in loc[1:] if isinstance(part, int))]
        field = str(location[0]) if location else ""
        if field in said or (problem["type"] == "none_required" and field in properties):
            continue  # a union's other branch ("or absent"): the first problem says it
        said[field] = _one_problem(problem, location, properties, where)
    return "; ".join(list(said.values())[:_MOST_PROBLEMS])


def not_json_in_words(model: type[BaseModel], what: str) -> str:
    properties = model.model_json_schema(mode="validation").get("properties", {})
    return (
        f"body: {what}: send a JSON object with Content-Type: application/json, "
        f"e.g. {_body_example(properties)}"
    )


def repeated_in_words(names: Sequence[str]) -> str:
    return "; ".join(
        f"{name}: given more than once (give each query parameter once)" for name in names
    )


def _one_problem(
    problem: Mapping[str, Any],
    location: Sequence[str | int],
    properties: Mapping[str, Any],
    where: Where,
) -> str:
    kind = problem["type"]
    if not location:
        fields = ", ".join(f'"{name}"' for name in properties)
        return f"body: must be a JSON object with {fields}, e.g. {_body_example(properties)}"
    field = str(location[0])
    name = field + "".join(f"[{part}]" for part in location[1:])
    if kind == "extra_forbidden":
        known = ", ".join(properties) or "nothing"
        what = "query parameter of this route" if where == "query" else "field of this body"
        return f"{name}: is not a {what} (it takes {known})"
    field_schema = properties.get(field, {})
    schema = field_schema
    for _ in location[1:]:
        schema = schema.get("items", {})
    expected = _expectation(schema)
    if kind == "missing":
        said = f"{name}: is required, {expected}"
    else:
        said = f"{name}: must be {expected}"
        if kind == "too_long" and "maxItems" in schema:
            said = f"{name}: may hold at most {schema['maxItems']} items"
    example = _example(field, field_schema, where)
    if example:
        said += f", e.g. {example}"
    if where == "query" and kind != "missing":
        said += f" (got {_shown(problem.get('input'))})"
    return said


def _expectation(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            return f"a whole number from {low} to {high}"
        if low is not None:
            return f"a whole number, at least {low}"
        return "a whole number"
    if kind == "string":
        if schema.get("pattern") == SHA256_PATTERN:
            return "a SHA-256 digest: 64 lowercase hex digits"
        if "pattern" in schema:
            return f"text matching {schema['pattern']}"
        return "text"
    if kind == "boolean":
        return "true or false"
    if kind == "array":
        items = _expectation(schema.get("items", {}))
        most = f", at most {schema['maxItems']}" if "maxItems" in schema else ""
        return f"a JSON array, each item {items}{most}"
    if kind == "object":
        return "a JSON object"
    return "a valid value"


def _example(field: str, schema: Mapping[str, Any], where: Where) -> str:
    examples = schema.get("examples") or []
    if not examples:
        return ""
    if where == "query":
        return f"{field}={examples[0]}"
    return json.dumps({field: examples[0]})


def _body_example(properties: Mapping[str, Any]) -> str:
    return json.dumps(
        {name: (schema.get("examples") or [None])[0] for name, schema in properties.items()}
    )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."
