"""Caption repository and key ring on SQLite: WAL, pooled connections, migrations, FTS5 search."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from captioner.domain.access import ApiKey, Scope
from captioner.domain.errors import CaptionerError, KeyNameTaken, StorageFull, StorageUnavailable
from captioner.domain.model import (
    CaptionChoice,
    CaptionKey,
    Claim,
    ImageRecord,
    ListedImage,
    ModelCaptions,
    NewImageRecord,
    Provenance,
    Readiness,
)
from captioner.domain.rules import MAX_IMAGE_ID

# Ids are SQLite INTEGERs (signed 64-bit): a bigger id can name no image.
_COLUMNS = (
    "id, sha256, path, description, model, prompt, created_at, width, height, "
    "content_type, original_name, model_revision, generation, duration_ms"
)
_PAGE = 1000
_WORD = re.compile(r"\w+", re.UNICODE)
# No notifications between processes on SQLite: a waiter in another process looks this often
# (waiters in the claimant's own process are woken by the service directly).
_CLAIM_POLL_S = 0.05

# Each entry moves the schema one version forward; applied in order, never edited once shipped.
MIGRATIONS: tuple[str, ...] = (
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
    # The metrics scope. SQLite cannot alter a CHECK: both tables are rebuilt, sessions
    # (children of keys) set aside first so dropping the keys cascades to nothing.
    """
    CREATE TEMP TABLE kept_sessions AS SELECT * FROM api_sessions;
    CREATE TEMP TABLE kept_keys AS SELECT * FROM api_keys;
    DROP TABLE api_sessions;
    DROP TABLE api_keys;
    CREATE TABLE api_keys (
        name         TEXT PRIMARY KEY,
        scope        TEXT NOT NULL CHECK (scope IN ('read', 'upload', 'admin', 'metrics')),
        key_sha256   TEXT NOT NULL UNIQUE,
        created_at   TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE api_sessions (
        token_sha256 TEXT PRIMARY KEY,
        key_name     TEXT NOT NULL REFERENCES api_keys (name) ON DELETE CASCADE,
        expires_at   TEXT NOT NULL
    );
    CREATE INDEX api_sessions_by_key ON api_sessions (key_name);
    INSERT INTO api_keys (name, scope, key_sha256, created_at, last_used_at)
        SELECT name, scope, key_sha256, created_at, last_used_at FROM kept_keys;
    INSERT INTO api_sessions (token_sha256, key_name, expires_at)
        SELECT token_sha256, key_name, expires_at FROM kept_sessions;
    DROP TABLE kept_sessions;
    DROP TABLE kept_keys;
    """,
    """
    -- The models present and how many images each described, from the index alone.
    CREATE INDEX images_by_model ON images (model, sha256);
    -- Each record names its image's first record (image_id = id on that one), kept by
    -- triggers whoever inserts or deletes: listings walk first records alone, however many
    -- re-captions lie on top of them.
    ALTER TABLE images ADD COLUMN image_id INTEGER;
    UPDATE images SET image_id = (SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = images.sha256);
    CREATE INDEX images_firsts ON images (id) WHERE id = image_id;
    CREATE TRIGGER images_image_id_insert AFTER INSERT ON images BEGIN
        UPDATE images SET image_id = (SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = new.sha256)
        WHERE id = new.id;
    END;
    CREATE TRIGGER images_image_id_delete AFTER DELETE ON images WHEN old.id = old.image_id BEGIN
        UPDATE images SET image_id = (SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = old.sha256)
        WHERE sha256 = old.sha256;
    END;
    """,
)
_KEY_COLUMNS = "api_keys.name, scope, created_at, last_used_at, key_sha256"


class SqliteCaptionRepository:
    """Implements the CaptionRepository and KeyRing ports; safe to share between threads.

    The keys live in the catalogue's database, so every replica sharing it sees a revocation.

    Connections come from a small pool: each operation borrows one and gives it back, so a
    connection is never used by two threads at once, and the number of open connections is
    the peak number of concurrent operations, however many threads come and go.
    """

    def __init__(
        self, database: Path, busy_timeout_ms: int = 10_000, claim_poll_s: float = _CLAIM_POLL_S
    ) -> None:
        self._database = Path(database)
        self._claim_poll_s = claim_poll_s
        self._busy_timeout_ms = busy_timeout_ms
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._open: list[sqlite3.Connection] = []
        self._open_lock = threading.Lock()
        self._database.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    @property
    def schema_version(self) -> int:
        return int(self._read_one("SELECT version FROM schema_version")[0])

    @property
    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def find(self, sha256: str, model: str, prompt: str) -> ImageRecord | None:
        row = self._read_one(
            f"SELECT {_COLUMNS} FROM images WHERE sha256 = ? AND model = ? AND prompt = ?",
            (sha256, model, prompt),
        )
        return _record(row) if row else None

    def find_many(self, sha256s: Sequence[str], model: str, prompt: str) -> Sequence[ImageRecord]:
        if not sha256s:
            return []
        marks = ", ".join("?" * len(sha256s))
        rows = self._read_all(
            f"""SELECT {_COLUMNS} FROM images
                WHERE model = ? AND prompt = ? AND sha256 IN ({marks})""",
            (model, prompt, *sha256s),
        )
        return [_record(row) for row in rows]

    def captions_of(self, sha256: str) -> Sequence[ImageRecord]:
        rows = self._read_all(
            f"SELECT {_COLUMNS} FROM images WHERE sha256 = ? ORDER BY id", (sha256,)
        )
        return [_record(row) for row in rows]

    def without_caption(
        self, model: str, prompt: str, after: int = 0, limit: int = _PAGE
    ) -> Sequence[ImageRecord]:
        rows = self._read_all(
            f"SELECT {_COLUMNS} FROM images AS i WHERE i.id > ? AND {_FIRST_WITHOUT} "
            "ORDER BY i.id LIMIT ?",
            (after, model, prompt, limit),
        )
        return [_record(row) for row in rows]

    def count_without_caption(self, model: str, prompt: str) -> int:
        row = self._read_one(
            f"SELECT COUNT(*) FROM images AS i WHERE i.id > ? AND {_FIRST_WITHOUT}",
            (0, model, prompt),
        )
        return int(row[0])

    def models_with_revision(self, revision: str) -> Sequence[str]:
        rows = self._read_all(
            "SELECT DISTINCT model FROM images WHERE model_revision = ? ORDER BY model",
            (revision,),
        )
        return [str(row[0]) for row in rows]

    def adopt_records(self, aliases: Sequence[str], model: str, revision: str) -> int:
        if not aliases:
            return 0
        marks = ", ".join("?" * len(aliases))
        with self._writing() as db:
            # The write lock is held from BEGIN IMMEDIATE: no record lands in between.
            db.execute(
                f"""DELETE FROM images WHERE id IN (
                        SELECT i.id FROM images AS i
                        WHERE i.model IN ({marks}) AND i.model_revision = ?
                          AND EXISTS (
                            SELECT 1 FROM images AS j
                            WHERE j.sha256 = i.sha256 AND j.prompt = i.prompt AND (
                                j.model = ? OR (j.model IN ({marks}) AND j.model_revision = ?
                                                AND j.id < i.id))))""",
                (*aliases, revision, model, *aliases, revision),
            )
            renamed = db.execute(
                f"UPDATE images SET model = ? WHERE model IN ({marks}) AND model_revision = ?",
                (model, *aliases, revision),
            ).rowcount
        return int(renamed)

    def add(self, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        row = self._write_one(_INSERT, _insert_params(new))
        if row is not None:
            return _record(row), True
        # The unique key was taken between our lookup and insert (another thread or process).
        existing = self.find(new.sha256, new.model, new.prompt)
        if existing is None:
            # Deleted between our insert and lookup: vanishingly rare, and the caller holds
            # the service's lock for these bytes, so a second insert cannot race again.
            return self.add(new)
        return existing, False

    def claim(self, key: CaptionKey, lease_s: float) -> Claim | None:
        owner = Claim.new_owner()
        now = time.time()
        # Upsert that only overwrites an expired claim: taking over is as atomic as claiming.
        row = self._write_one(
            """INSERT INTO caption_claims (sha256, model, prompt, owner, expires_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (sha256, model, prompt) DO UPDATE
                   SET owner = excluded.owner, expires_at = excluded.expires_at
                   WHERE caption_claims.expires_at <= ?
               RETURNING owner""",
            (key.sha256, key.model, key.prompt, owner, now + lease_s, now),
        )
        return Claim(key, owner) if row is not None else None

    def renew(self, claim: Claim, lease_s: float) -> bool:
        key = claim.key
        row = self._write_one(
            """UPDATE caption_claims SET expires_at = ?
               WHERE sha256 = ? AND model = ? AND prompt = ? AND owner = ? RETURNING owner""",
            (time.time() + lease_s, key.sha256, key.model, key.prompt, claim.owner),
        )
        return row is not None

    def await_record(self, key: CaptionKey, timeout_s: float) -> ImageRecord | None:
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.find(key.sha256, key.model, key.prompt)
            if record is not None or not self._claimed(key):
                # Looked up again: the record may have landed between the two reads.
                return record or self.find(key.sha256, key.model, key.prompt)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(self._claim_poll_s, left))

    def complete(self, claim: Claim, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        with self._writing() as db:
            row = db.execute(_INSERT, _insert_params(new)).fetchone()
            created = row is not None
            if row is None:  # stored meanwhile by an owner whose lease we took over
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM images WHERE sha256 = ? AND model = ? AND prompt = ?",
                    (new.sha256, new.model, new.prompt),
                ).fetchone()
            _release(db, claim)
        return _record(row), created

    def abandon(self, claim: Claim) -> None:
        with self._writing() as db:
            _release(db, claim)

    def _claimed(self, key: CaptionKey) -> bool:
        row = self._read_one(
            """SELECT 1 FROM caption_claims
               WHERE sha256 = ? AND model = ? AND prompt = ? AND expires_at > ?""",
            (key.sha256, key.model, key.prompt, time.time()),
        )
        return row is not None

    def get(self, record_id: int) -> ImageRecord | None:
        if not 1 <= record_id <= MAX_IMAGE_ID:
            return None  # no row can have it (and SQLite cannot even take it as a parameter)
        row = self._read_one(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (record_id,))
        return _record(row) if row else None

    def list(
        self,
        limit: int,
        before: int | None = None,
        query: str | None = None,
        shown: CaptionChoice | None = None,
    ) -> Sequence[ListedImage]:
        # "Image ids below `before`" as an inclusive bound SQLite can take: a cursor past the
        # range of ids bounds nothing.
        last = MAX_IMAGE_ID if before is None else min(before - 1, MAX_IMAGE_ID)
        choice = shown or CaptionChoice(model="", prompt="")
        picks = (int(choice.only_model), choice.model, choice.model, choice.prompt)
        if query is not None:
            match = fts_query(query)
            if match is None:
                return []
            # From the matching captions, those that are their image's shown caption.
            rows = self._read_all(
                f"""SELECT {_SHOWN_COLUMNS}
                    FROM images_fts JOIN images AS c ON c.id = images_fts.rowid
                    JOIN images AS f ON f.id = {_FIRST_OF_C}
                    WHERE images_fts MATCH ? AND c.id = {_SHOWN_CAPTION} AND f.id <= ?
                    ORDER BY bm25(images_fts), f.id DESC LIMIT ?""",
                (match, *picks, last, limit),
            )
        else:
            # Walks the images' first records alone (the images_firsts index), newest first.
            rows = self._read_all(
                f"""SELECT {_SHOWN_COLUMNS}
                    FROM images AS f INDEXED BY images_firsts
                    JOIN images AS c ON c.id = {_SHOWN_CAPTION}
                    WHERE f.id = f.image_id AND f.id <= ?
                    ORDER BY f.id DESC LIMIT ?""",
                (*picks, last, limit),
            )
        return [_listed(row) for row in rows]

    def models(self) -> Sequence[ModelCaptions]:
        rows = self._read_all(
            "SELECT model, COUNT(DISTINCT sha256) FROM images GROUP BY model ORDER BY model"
        )
        return [ModelCaptions(str(model), int(images)) for model, images in rows]

    def delete(self, record_id: int) -> ImageRecord | None:
        if not 1 <= record_id <= MAX_IMAGE_ID:
            return None  # as in get: no row can have it
        row = self._write_one(f"DELETE FROM images WHERE id = ? RETURNING {_COLUMNS}", (record_id,))
        return _record(row) if row else None

    def delete_image(self, sha256: str) -> Sequence[ImageRecord]:
        with self._writing() as db:
            rows = db.execute(
                f"DELETE FROM images WHERE sha256 = ? RETURNING {_COLUMNS}", (sha256,)
            ).fetchall()
        return sorted((_record(row) for row in rows), key=lambda r: r.id)

    def count_with_path(self, path: str) -> int:
        return int(self._read_one("SELECT COUNT(*) FROM images WHERE path = ?", (path,))[0])

    def all_records(self) -> Iterator[ImageRecord]:
        # Pages by id, so a check of a big catalogue neither holds a connection for the whole
        # walk nor loads every row at once.
        after = 0
        while True:
            rows = self._read_all(
                f"SELECT {_COLUMNS} FROM images WHERE id > ? ORDER BY id LIMIT {_PAGE}", (after,)
            )
            if not rows:
                return
            for row in rows:
                yield _record(row)
            after = int(rows[-1][0])

    def add_key(self, key: ApiKey, key_sha256: str) -> None:
        try:
            self._write_one(
                "INSERT INTO api_keys (name, scope, key_sha256, created_at) VALUES (?, ?, ?, ?)",
                (key.name, key.scope.value, key_sha256, _timestamp(key.created_at)),
            )
        except sqlite3.IntegrityError:
            raise KeyNameTaken(f"An API key named {key.name!r} exists already.") from None

    def key_with_hash(self, key_sha256: str) -> tuple[ApiKey, str] | None:
        row = self._read_one(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_sha256 = ?", (key_sha256,)
        )
        return (_key(row), str(row[4])) if row else None

    def all_keys(self) -> Sequence[ApiKey]:
        rows = self._read_all(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, name")
        return [_key(row) for row in rows]

    def has_keys(self) -> bool:
        return bool(self._read_one("SELECT EXISTS (SELECT 1 FROM api_keys)")[0])

    def remove_key(self, name: str) -> bool:
        # Its sessions go with it (ON DELETE CASCADE).
        return (
            self._write_one("DELETE FROM api_keys WHERE name = ? RETURNING name", (name,))
            is not None
        )

    def mark_used(self, name: str, when: datetime) -> None:
        self._write_one(
            "UPDATE api_keys SET last_used_at = ? WHERE name = ?", (_timestamp(when), name)
        )

    def add_session(self, token_sha256: str, key_name: str, expires_at: datetime) -> None:
        with self._borrow() as db, _Write(db):
            db.execute(
                "DELETE FROM api_sessions WHERE expires_at <= ?",
                (_timestamp(datetime.now(timezone.utc)),),
            )
            db.execute(
                "INSERT INTO api_sessions (token_sha256, key_name, expires_at) VALUES (?, ?, ?)",
                (token_sha256, key_name, _timestamp(expires_at)),
            )

    def key_of_session(self, token_sha256: str, now: datetime) -> tuple[ApiKey, str] | None:
        row = self._read_one(
            f"""SELECT {_KEY_COLUMNS.replace("key_sha256", "token_sha256")}
                FROM api_sessions JOIN api_keys ON api_keys.name = api_sessions.key_name
                WHERE token_sha256 = ? AND expires_at > ?""",
            (token_sha256, _timestamp(now)),
        )
        return (_key(row), str(row[4])) if row else None

    def remove_session(self, token_sha256: str) -> None:
        self._write_one("DELETE FROM api_sessions WHERE token_sha256 = ?", (token_sha256,))

    def readiness(self) -> Readiness:
        try:
            # Take the write lock and give it back: proves writability without a commit's
            # fsync on every probe, and waits at most a second behind a running write.
            with self._borrow() as db:
                db.execute("PRAGMA busy_timeout = 1000")
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("ROLLBACK")
                finally:
                    db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        except sqlite3.Error as error:
            return Readiness(False, f"database {self._database} is not writable: {error}")
        return Readiness.ok()

    def close(self) -> None:
        with self._open_lock:
            for connection in self._open:
                connection.close()
            self._open.clear()
        self._idle = queue.LifoQueue()

    def _read_one(self, sql: str, params: Sequence[object] = ()) -> Any:
        with self._borrow() as db:
            return db.execute(sql, params).fetchone()

    def _read_all(self, sql: str, params: Sequence[object] = ()) -> Sequence[Any]:
        with self._borrow() as db:
            return db.execute(sql, params).fetchall()

    def _write_one(self, sql: str, params: Sequence[object] = ()) -> Any:
        with self._writing() as db:
            return db.execute(sql, params).fetchone()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a full or failing disk becomes a storage fault."""
        try:
            with self._borrow() as db, _Write(db):
                yield db
        except sqlite3.OperationalError as error:
            fault = _storage_fault(error, self._database)
            if fault is None:
                raise
            raise fault from error

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            connection = self._connect()
        try:
            yield connection
        finally:
            if connection.in_transaction:  # a failed COMMIT must not leak into the next user
                connection.rollback()
            self._idle.put(connection)

    def _use_wal(self, db: sqlite3.Connection) -> None:
        """Switch the file to WAL, waiting out other processes opening it at the same time.

        The switch needs the file to itself, and SQLite answers "database is locked" at once,
        busy_timeout or not, when it meets another connection's lock on the way (replicas
        started together on one data dir: 6 of 20 trials of 4 processes failed to start)."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: a pooled connection moves between threads, but the pool
        # guarantees only one thread uses it at a time.
        connection = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = FULL")
        with self._open_lock:
            self._open.append(connection)
        return connection

    def _migrate(self) -> None:
        with self._borrow() as db:
            self._use_wal(db)
            with _Write(db):
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = db.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    db.execute("INSERT INTO schema_version (version) VALUES (0)")
                    current = 0
                else:
                    current = int(row[0])
                if current > len(MIGRATIONS):
                    raise RuntimeError(
                        f"database {self._database} has schema version {current}, newer than "
                        f"this captioner knows ({len(MIGRATIONS)}); upgrade captioner"
                    )
                for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                    for statement in _statements(script):
                        db.execute(statement)
                    db.execute("UPDATE schema_version SET version = ?", (version,))


# The first record of each distinct image (by bytes) that has no record by (model, prompt);
# the UNIQUE (sha256, model, prompt) index answers both subqueries.
_FIRST_WITHOUT = """
    i.id = (SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = i.sha256)
    AND NOT EXISTS (
        SELECT 1 FROM images AS k WHERE k.sha256 = i.sha256 AND k.model = ? AND k.prompt = ?
    )"""


# The caption a listing shows for image f: the one place SQLite makes that choice, in the
# order of domain.model.caption_rank (preferred model and prompt first, then the newest);
# `(? = 0 OR ...)` keeps only the preferred model's captions when asked. The UNIQUE
# (sha256, model, prompt) index finds the image's few captions.
_SHOWN_CAPTION = """(
    SELECT k.id FROM images AS k WHERE k.sha256 = f.sha256 AND (? = 0 OR k.model = ?)
    ORDER BY (k.model = ? AND k.prompt = ?) DESC, k.id DESC LIMIT 1)"""
# An image's first record: its id is the image's place in listings and their cursor.
_FIRST_OF_C = "(SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = c.sha256)"
_SHOWN_COLUMNS = (
    ", ".join("c." + name.strip() for name in _COLUMNS.split(","))
    + ", f.id, (SELECT COUNT(*) FROM images AS n WHERE n.sha256 = f.sha256)"
)


_INSERT = f"""INSERT INTO images (sha256, path, description, model, prompt, created_at,
                                   width, height, content_type, original_name,
                                   model_revision, generation, duration_ms)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (sha256, model, prompt) DO NOTHING
               RETURNING {_COLUMNS}"""


def _insert_params(new: NewImageRecord) -> tuple[object, ...]:
    return (
        new.sha256,
        new.path,
        new.description,
        new.model,
        new.prompt,
        datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        new.width,
        new.height,
        new.content_type,
        new.original_name,
        new.provenance.model_revision,
        json.dumps(new.provenance.settings, sort_keys=True),
        new.duration_ms,
    )


def _release(db: sqlite3.Connection, claim: Claim) -> None:
    key = claim.key
    db.execute(
        "DELETE FROM caption_claims WHERE sha256 = ? AND model = ? AND prompt = ? AND owner = ?",
        (key.sha256, key.model, key.prompt, claim.owner),
    )


class _Write:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so busy_timeout applies."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def fts_query(text: str) -> str | None:
    """Turn what a person typed into a safe FTS5 query: each word quoted, as a prefix, ANDed.

    Quotes, ``*``, ``-``, ``NEAR`` and other FTS5 syntax in the input become plain words,
    so no input can make the MATCH fail.
    """
    words = _WORD.findall(text)[:32]
    if not words:
        return None
    return " ".join('"' + word.replace('"', '""') + '"*' for word in words)


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (sqlite3.execute runs one at a time)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


def _record(row: Sequence[object]) -> ImageRecord:
    (rid, sha, path, text, model, prompt, created, width, height, ctype, name) = row[:11]
    revision, generation, duration = row[11:14]
    return ImageRecord(
        id=int(str(rid)),
        sha256=str(sha),
        path=str(path),
        description=str(text),
        model=str(model),
        prompt=str(prompt),
        created_at=datetime.fromisoformat(str(created)),
        width=int(str(width)),
        height=int(str(height)),
        content_type=str(ctype),
        original_name=None if name is None else str(name),
        provenance=Provenance.of(
            None if revision is None else str(revision), json.loads(str(generation))
        ),
        duration_ms=None if duration is None else float(str(duration)),
    )


def _listed(row: Sequence[object]) -> ListedImage:
    return ListedImage(_record(row[:14]), int(str(row[14])), int(str(row[15])))


def _timestamp(when: datetime) -> str:
    # One fixed format in UTC, so stored timestamps compare correctly as text.
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _key(row: Sequence[object]) -> ApiKey:
    name, scope, created, used = row[:4]
    return ApiKey(
        name=str(name),
        scope=Scope(str(scope)),
        created_at=datetime.fromisoformat(str(created)),
        last_used_at=None if used is None else datetime.fromisoformat(str(used)),
    )


def _storage_fault(error: sqlite3.OperationalError, database: Path) -> CaptionerError | None:
    """A full or read-only disk under the database is a storage fault (507 / 503), no bug."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(error):
        return StorageFull(
            f"Storage is full: the database {database} cannot grow ({error}). "
            "Free disk space, then upload again."
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
        return StorageUnavailable(
            f"The database {database} cannot be written ({error}). Check its disk is mounted "
            "read-write and healthy; stored images can still be listed."
        )
    return None
