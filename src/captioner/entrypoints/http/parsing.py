"""Request parsing: the query string or JSON body as the pydantic model a route documents."""

from __future__ import annotations

import json
from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from captioner.domain.errors import InvalidRequest
from captioner.entrypoints.http.validation import (
    not_json_in_words,
    problems_in_words,
    repeated_in_words,
)

Model = TypeVar("Model", bound=BaseModel)


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
