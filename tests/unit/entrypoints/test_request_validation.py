"""Refused requests are answered in words: the parameter, what it should be, an example;
unknown routes and malformed ids say what was expected. Never a library's internals."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioner.config import Settings
from tests.unit.conftest import FakeWorld, build_fake_world

# What pydantic and werkzeug say of themselves, which means nothing to a client.
INTERNALS = (
    "pydantic",
    "input_value",
    "input_type",
    "type=",
    "errors.pydantic.dev",
    "constrained",
    "Input should",
    "instance of",
    "ImageListQuery",
    "HashCheck",
    "requested URL was not found",
    "method is not allowed for the requested URL",
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
PATH_SEGMENTS = st.text(
    st.sampled_from("abcxyz-_~.%+ 0123456789é"), min_size=1, max_size=30
).filter(lambda s: not s.isdigit() and s not in {".", "..", "check", "export.jsonl"})
QUIET = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)


@pytest.fixture(scope="module")
def world() -> Iterator[FakeWorld]:
    with tempfile.TemporaryDirectory() as folder:
        built = build_fake_world(Settings(data_dir=Path(folder) / "data"))
        yield built
        built.container.unwire()


def documented(world: FakeWorld) -> dict[str, Any]:
    spec: dict[str, Any] = world.client.get("/openapi.json").get_json()
    return spec


def query_parameters(world: FakeWorld) -> list[tuple[str, str, str]]:
    """(path, method, parameter) for every query parameter of every documented route."""
    found = []
    for path, item in documented(world)["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    found.append((path.replace("{image_id}", "1"), method, parameter["name"]))
    return found


def json_bodies(world: FakeWorld) -> list[tuple[str, str, set[str]]]:
    """(path, method, field names) for every route that takes a JSON body."""
    spec = documented(world)
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                ref = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
                fields = set(spec["components"]["schemas"][ref]["properties"])
                found.append((path.replace("{image_id}", "1"), method, fields))
    return found


def assert_in_words(response: Any) -> str:
    body = response.get_json()
    assert set(body) == {"error"}, body
    error: str = body["error"]
    for internal in INTERNALS:
        assert internal not in error, error
    return error


def test_a_cursor_that_is_not_a_number_says_what_it_should_be(world: FakeWorld) -> None:
    response = world.client.get("/images?before=abc")

    assert response.status_code == 400
    assert assert_in_words(response) == (
        "before: must be a whole number from 1 to 9223372036854775807, e.g. before=120 (got 'abc')"
    )


def test_an_unknown_query_parameter_names_the_ones_the_route_takes(world: FakeWorld) -> None:
    response = world.client.get("/images?limt=5")

    assert response.status_code == 400
    assert assert_in_words(response).startswith("limt: is not a query parameter of this route")
    assert "limit" in response.get_json()["error"]


def test_a_bad_digest_in_a_body_names_its_place_and_the_form(world: FakeWorld) -> None:
    response = world.client.post("/images/check", json={"sha256": ["a" * 64, "zz"]})

    assert response.status_code == 400
    error = assert_in_words(response)
    assert error.startswith("sha256[1]: must be a SHA-256 digest: 64 lowercase hex digits, e.g.")


def test_every_route_that_takes_parameters_is_covered(world: FakeWorld) -> None:
    assert ("/images", "get", "before") in query_parameters(world)
    assert any(path == "/images/check" for path, _, _ in json_bodies(world))


@QUIET
@given(junk=st.text(max_size=60))
def test_junk_in_any_query_parameter_is_a_400_in_words_or_accepted(
    world: FakeWorld, junk: str
) -> None:
    for path, method, name in query_parameters(world):
        response = world.client.open(path, method=method.upper(), query_string={name: junk})

        assert response.status_code in (200, 400), (path, name, junk)
        if response.status_code == 400 and response.get_json()["error"] == "No image file provided":
            continue  # POST /upload took the parameter; it is the image that is missing
        if response.status_code == 400:
            error = assert_in_words(response)
            assert error.startswith(f"{name}: must be "), error
            assert "e.g. " in error


@QUIET
@given(body=JSON_VALUES)
def test_any_json_body_is_a_400_in_words_or_accepted(world: FakeWorld, body: object) -> None:
    for path, method, fields in json_bodies(world):
        response = world.client.open(
            path, method=method.upper(), data=json.dumps(body), content_type="application/json"
        )

        assert response.status_code in (200, 400), (path, body)
        if response.status_code == 400:
            error = assert_in_words(response)
            # Keys are any text (even "[" or "; "), so the message is checked to open with a
            # name it may name rather than split apart.
            allowed = fields | {"body"} | set(body if isinstance(body, dict) else ())
            assert any(error.startswith((f"{name}:", f"{name}[")) for name in allowed), error


@QUIET
@given(segment=PATH_SEGMENTS)
def test_an_id_that_is_not_a_number_is_a_404_that_says_ids_are_numbers(
    world: FakeWorld, segment: str
) -> None:
    for suffix in ("", "/file", "/thumbnail", "/captions"):
        response = world.client.get(f"/images/{quote(segment, safe='')}{suffix}")

        assert response.status_code == 404, (segment, suffix)
        error = assert_in_words(response)
        assert error.startswith(f"/images/<image_id>{suffix} takes a whole number"), error
        assert f"e.g. /images/12{suffix}" in error


def test_an_unknown_route_is_a_json_404_pointing_to_the_docs(world: FakeWorld) -> None:
    response = world.client.get("/foo")

    assert response.status_code == 404
    assert assert_in_words(response) == "No route GET /foo; see /docs for every route."


def test_a_wrong_method_is_a_405_naming_the_methods_the_route_takes(world: FakeWorld) -> None:
    response = world.client.get("/upload")

    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert assert_in_words(response) == (
        "GET is not allowed on /upload; it takes POST. See /docs for every route."
    )


def test_a_json_null_body_is_told_to_send_an_object(world: FakeWorld) -> None:
    response = world.client.post("/images/check", data="null", content_type="application/json")

    assert response.status_code == 400
    assert assert_in_words(response).startswith('body: must be a JSON object with "sha256", e.g.')


def test_a_body_that_is_not_json_says_how_to_send_it(world: FakeWorld) -> None:
    response = world.client.post("/images/check", data="sha256=ab", content_type="text/plain")

    assert response.status_code == 400
    assert "Content-Type: application/json" in assert_in_words(response)
