"""compose.yaml as Compose reads it: the file, its `${VAR}` interpolation, and one service's
command and environment with the variables a `.env` would give."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
SCHEMA_DIR = Path(__file__).resolve().parent / "compose_spec"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal $.
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load() -> dict[str, Any]:
    """compose.yaml as parsed YAML (anchors and merge keys resolved, nothing interpolated)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation of one string; a `:?`/`?` variable left unset raises KeyError."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        given = variables.get(name)
        unset = given is None or (given == "" and operator is not None and ":" in operator)
        if operator is None or not unset:
            return given or ""
        if operator.endswith("?"):
            raise KeyError(f"{name}: {argument}")
        return argument

    return _VARIABLE.sub(value, text)


def service_command(service: str) -> list[str]:
    command: list[str] = load()["services"][service]["command"]
    return command


def service_environment(service: str, variables: Mapping[str, str]) -> dict[str, str]:
    """The environment compose gives ``service``'s container, after interpolation."""
    environment: Mapping[str, Any] = load()["services"][service]["environment"]
    return {name: interpolate(str(value), variables) for name, value in environment.items()}
