"""The house rules of the cut hold in the source: who may import whom."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "captioner"
ADAPTERS = SRC / "adapters"
# The port families; each is one subpackage, and a module directly in adapters/ is a family
# of one (prometheus, rate_limits).
FAMILIES = sorted(
    path.name if path.is_dir() else path.stem
    for path in ADAPTERS.iterdir()
    if (path.is_dir() and (path / "__init__.py").exists())
    or (path.suffix == ".py" and path.stem != "__init__")
)
FRAMEWORKS = {
    "flask",
    "werkzeug",
    "torch",
    "transformers",
    "PIL",
    "sqlite3",
    "psycopg",
    "psycopg_pool",
    "boto3",
    "botocore",
    "dependency_injector",
    "pydantic",
    "httpx",
    "prometheus_client",
}


def imports_of(path: Path) -> Iterator[str]:
    """Every module name a file imports, at any depth (lazy imports in functions too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def family_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["captioner", "adapters"] or len(parts) < 3:
        return None
    return parts[2]


def modules_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_adapters_are_grouped_in_port_families() -> None:
    flat = sorted(path.name for path in ADAPTERS.glob("*.py") if path.name != "__init__.py")

    assert {"catalogue", "storage", "imaging", "captioners"} <= set(FAMILIES)
    assert flat == ["prometheus.py", "rate_limits.py"]


@pytest.mark.parametrize("family", FAMILIES)
def test_an_adapter_family_never_imports_another_family_or_an_entrypoint(family: str) -> None:
    home = ADAPTERS / family
    files = modules_under(home) if home.is_dir() else [ADAPTERS / f"{family}.py"]
    crossings = {
        f"{path.relative_to(SRC)} imports {module}"
        for path in files
        for module in imports_of(path)
        if family_of(module) not in (None, family)
        or module.startswith(("captioner.entrypoints", "captioner.container"))
    }

    assert crossings == set()


def test_the_domain_imports_only_the_standard_library_and_itself() -> None:
    outside = {
        f"{path.relative_to(SRC)} imports {module}"
        for path in modules_under(SRC / "domain")
        for module in imports_of(path)
        if module.split(".")[0] in FRAMEWORKS
        or (module.split(".")[0] == "captioner" and not module.startswith("captioner.domain"))
        or (
            module.split(".")[0] not in sys.stdlib_module_names
            and module.split(".")[0] not in {"captioner", "__future__"}
        )
    }

    assert outside == set()


def test_only_the_container_names_adapter_classes_outside_the_adapters() -> None:
    users = {
        str(path.relative_to(SRC))
        for path in modules_under(SRC)
        if not path.is_relative_to(ADAPTERS)
        and any(family_of(module) for module in imports_of(path))
    }

    assert users <= {"container.py"}
