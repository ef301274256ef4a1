"""SQLite's schema steps and runner as shipped before the schema files (one-row version)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

# Verbatim from adapters/catalogue/sqlite.py before the schema files; never edit.
STEPS: tuple[str, ...] = (
    """
    CREATE TABLE images (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256        TEXT    NOT NULL,
        path          TEXT    NOT NULL,   -- relative to the data dir, as in the seed
        description   TEXT    NOT NULL,   -- the caption, as in the seed
        model         TEXT    NOT NULL,
        prompt        TEXT    NOT NULL DEFAULT '',
        created_at    TEXT    NOT NULL,
        width         INTEGER NOT NULL,
        height        INTEGER NOT NULL,
        content_type  TEXT    NOT NULL,
        original_name TEXT,
        UNIQUE (sha256, model, prompt)
    );
    CREATE INDEX images_by_path ON images (path);
    """,
    """
    CREATE VIRTUAL TABLE images_fts USING fts5(
        description, content='images', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER images_fts_insert AFTER INSERT ON images BEGIN
        INSERT INTO images_fts (rowid, description) VALUES (new.id, new.description);
    END;
    CREATE TRIGGER images_fts_delete AFTER DELETE ON images BEGIN
        INSERT INTO images_fts (images_fts, rowid, description)
        VALUES ('delete', old.id, old.description);
    END;
    CREATE TRIGGER images_fts_update AFTER UPDATE OF description ON images BEGIN
        INSERT INTO images_fts (images_fts, rowid, description)
        VALUES ('delete', old.id, old.description);
        INSERT INTO images_fts (rowid, description) VALUES (new.id, new.description);
    END;
    INSERT INTO images_fts (images_fts) VALUES ('rebuild');
    """,
    # Provenance: rows from before it was kept have an unknown revision (NULL), no recorded
    # settings ('{}') and no model time (NULL).
    """
    ALTER TABLE images ADD COLUMN model_revision TEXT;
    ALTER TABLE images ADD COLUMN generation TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE images ADD COLUMN duration_ms REAL;
    """,
    """
    -- Model runs in progress, one per key, so processes sharing the file caption once.
    CREATE TABLE caption_claims (
        sha256     TEXT NOT NULL,
        model      TEXT NOT NULL,
        prompt     TEXT NOT NULL,
        owner      TEXT NOT NULL,
        expires_at REAL NOT NULL,   -- Unix time: every process on the machine shares the clock
        PRIMARY KEY (sha256, model, prompt)
    );
    """,
    """
    CREATE TABLE api_keys (
        name         TEXT PRIMARY KEY,
        scope        TEXT NOT NULL CHECK (scope IN ('read', 'upload', 'admin')),
        key_sha256   TEXT NOT NULL UNIQUE,   -- never the key itself
        created_at   TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE api_sessions (
        token_sha256 TEXT PRIMARY KEY,       -- never the cookie's token itself
        key_name     TEXT NOT NULL REFERENCES api_keys (name) ON DELETE CASCADE,
        expires_at   TEXT NOT NULL
    );
    CREATE INDEX api_sessions_by_key ON api_sessions (key_name);
    """,
)


def build(database: Path, version: int) -> None:
    """A database file at ``version``, as that captioner's migration left it."""
    with closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version (version) VALUES (0)")
        for number, script in enumerate(STEPS[:version], start=1):
            for statement in _statements(script):
                db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (number,))
        db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [statement for statement in statements if statement]
