"""Databases as captioners before the schema files left them, at any version they shipped.

Those captioners kept their steps in code and their bookkeeping differed by engine: SQLite a
one-row ``schema_version`` table, PostgreSQL a ``schema_migrations`` row per step. Their steps
are the first schema files, unchanged: each file's SQL (comments and layout aside) must hash to
what was shipped, so a database built here at version k is the one those captioners made.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg

from captioner.adapters.catalogue.migrations import schema_steps

# The first 16 hex digits of the SHA-256 of each shipped step's normalised SQL; never edit.
SHIPPED = {
    "sqlite": (
        "ad29c2646fb40ce7",
        "1b381431e7ebcb74",
        "9eb992f763bc2dbb",
        "51af5203926720be",
        "fe43d51177998732",
        "52aa3d1c83245b6b",
        "68112bdea77ad77c",
    ),
    "postgres": (
        "9396f531a68f1e1d",
        "e535d945afddd1ab",
        "9333eb661ca0c68e",
        "d69aca1b34cd67bc",
        "dc46ec1fdd8aba83",
    ),
}


def normalised(sql: str | None) -> str:
    """SQL without comments and with single spaces: the same schema however it is laid out."""
    return re.sub(r"\s+", " ", re.sub(r"--[^\n]*", "", sql or "")).strip()


def fingerprint(sql: str) -> str:
    return hashlib.sha256(normalised(sql).encode()).hexdigest()[:16]


def shipped_steps(engine: str) -> list[str]:
    """The SQL of every step shipped before the schema files, checked against SHIPPED."""
    steps = [step.script for step in schema_steps(engine)[: len(SHIPPED[engine])]]
    assert [fingerprint(step) for step in steps] == list(SHIPPED[engine]), "a shipped step changed"
    return steps


def build_sqlite(database: Path, version: int) -> None:
    """A SQLite file at ``version``, with the one-row ``schema_version`` those captioners kept."""
    with closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        for script in shipped_steps("sqlite")[:version]:
            # executescript would commit the open transaction first: statement by statement.
            buffer = ""
            for line in script.splitlines(keepends=True):
                buffer += line
                if sqlite3.complete_statement(buffer):
                    db.execute(buffer)
                    buffer = ""
        db.execute("COMMIT")


def build_postgres(url: str, version: int) -> None:
    """A PostgreSQL database at ``version``, with a ``schema_migrations`` row per step."""
    with psycopg.connect(url) as db:
        db.execute(
            """CREATE TABLE schema_migrations (
                   version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        for number, script in enumerate(shipped_steps("postgres")[:version], start=1):
            db.execute(script)
            db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
