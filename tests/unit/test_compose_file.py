"""compose.yaml is a valid Compose file (the Compose Specification's own JSON schema), asks
.env.example for every setting it needs, and publishes nothing but the API on loopback."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema import Draft7Validator

from tests.support import compose

SCHEMA = json.loads((compose.SCHEMA_DIR / "compose-spec.json").read_text())


def env_example() -> dict[str, str]:
    lines = (compose.ROOT / ".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {name: value for name, value in pairs}


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [error.message for error in Draft7Validator(SCHEMA).iter_errors(document)]


def test_compose_file_is_valid_under_the_compose_specification_schema() -> None:
    assert schema_errors(compose.load()) == []


def test_the_schema_refuses_a_misspelt_service_key() -> None:
    document = compose.load()
    document["services"]["api"]["comand"] = document["services"]["api"].pop("command")

    assert any("comand" in message for message in schema_errors(document))


def test_every_variable_the_compose_file_requires_is_in_env_example() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):?\?", compose.COMPOSE_FILE.read_text()))

    assert required
    assert required - set(env_example()) == set()


def test_only_the_api_publishes_a_port_and_on_loopback_by_default() -> None:
    services = compose.load()["services"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}

    assert list(published) == ["api"]
    ports = [compose.interpolate(port, env_example()) for port in published["api"]]
    assert ports == ["127.0.0.1:8080:8080"]
    assert [compose.interpolate(port, {}) for port in published["api"]] == ["127.0.0.1:8080:8080"]


def test_the_api_runs_the_images_default_command_and_the_worker_the_worker() -> None:
    containerfile = (compose.ROOT / "Containerfile").read_text()
    default_command = json.loads(re.findall(r"^CMD (\[.*\])$", containerfile, re.M)[-1])

    assert compose.service_command("api") == default_command
    assert compose.service_command("worker") == ["captioner", "worker"]


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:?set A}", {"A": "v"}, "v"),
        ("a$${A}", {"A": "v"}, "a${A}"),
    ],
)
def test_interpolation_follows_compose(text: str, variables: dict[str, str], expected: str) -> None:
    assert compose.interpolate(text, variables) == expected


def test_interpolation_refuses_a_required_variable_left_empty() -> None:
    with pytest.raises(KeyError, match="set A"):
        compose.interpolate("${A:?set A}", {"A": ""})
