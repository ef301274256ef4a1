"""The catalogue's schema history: numbered .sql files per engine, each applied once, in order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from captioner.adapters.catalogue.dialect import Dialect
from captioner.adapters.catalogue.sql import Executes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchemaStep:
    """One schema file: ``schema/<engine>/<version>_<what>.sql``."""

    version: int
    name: str
    script: str


def schema_steps(engine: str) -> tuple[SchemaStep, ...]:
    """The engine's schema files in order; their numbers must run 1, 2, 3... without a gap."""
    folder = resources.files(__package__) / "schema" / engine
    steps = tuple(
        SchemaStep(int(entry.name.split("_", 1)[0]), entry.name, entry.read_text("utf-8"))
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".sql")
    )
    if [step.version for step in steps] != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"schema files of {engine} are not numbered 1..{len(steps)}: {steps}")
    return steps


def newer_than_known(what: str, version: int, engine: str) -> str | None:
    """Why ``what`` at schema ``version`` cannot be taken by this captioner, or None."""
    known = len(schema_steps(engine))
    if version <= known:
        return None
    return (
        f"{what} has schema version {version}; this captioner knows up to {known}. Restore "
        "it with the captioner that made it, or a newer one."
    )


class LegacyVersion(Protocol):
    """Bookkeeping an earlier captioner kept instead of ``schema_migrations``."""

    def version(self, db: Executes) -> int:
        """The version it recorded (0 when there is none)."""
        ...

    def record(self, db: Executes, version: int) -> None:
        """Keep it up to date, so an earlier captioner still tells when the file is too new."""
        ...


def upgrade(
    db: Executes,
    steps: Sequence[SchemaStep],
    dialect: Dialect,
    where: str,
    legacy: LegacyVersion | None = None,
    refuse: Callable[[str], Exception] = RuntimeError,
) -> int:
    """Apply the steps the database lacks and return its version; the caller holds the lock.

    One rule on every engine: ``schema_migrations`` holds a row per step applied. A database
    newer than these steps is refused with ``refuse(message)``.
    """
    db.execute(
        f"""CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at {dialect.stamp_type} NOT NULL DEFAULT ({dialect.stamp_now}))""",
        (),
    )
    insert = f"INSERT INTO schema_migrations (version) VALUES ({dialect.mark})"
    current = int(
        db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations", ()).fetchone()[0]
    )
    if current == 0 and legacy is not None:
        # Steps an earlier captioner applied get their rows now, dated now: when is not known.
        current = legacy.version(db)
        for version in range(1, current + 1):
            db.execute(insert, (version,))
    if current > len(steps):
        raise refuse(
            f"{where} has schema version {current}, newer than this captioner knows "
            f"({len(steps)}); upgrade captioner"
        )
    for step in steps[current:]:
        for statement in dialect.statements(step.script):
            db.execute(statement, ())
        db.execute(insert, (step.version,))
        log.info("%s migrated to schema version %d (%s)", where, step.version, step.name)
    if legacy is not None:
        legacy.record(db, len(steps))
    return len(steps)
