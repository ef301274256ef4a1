"""The catalogue on SQLite: pooled connections, WAL, BEGIN IMMEDIATE, FTS5 search, disk faults."""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from captioner.adapters.catalogue.dialect import Dialect
from captioner.adapters.catalogue.migrations import schema_steps, upgrade
from captioner.adapters.catalogue.search import FTS5
from captioner.adapters.catalogue.sql import Executes, SqlCatalogue
from captioner.adapters.catalogue.tables import (
    Shape,
    TableRows,
    holds_library,
    unix_time_columns,
)
from captioner.domain.errors import CaptionerError, StorageFull, StorageUnavailable
from captioner.domain.model import Readiness
from captioner.domain.ports import Table, Value

# No notifications between processes on SQLite: a waiter in another process looks this often
# (waiters in the claimant's own process are woken by the service directly).
_CLAIM_POLL_S = 0.05


def _timestamp(when: datetime) -> str:
    # One fixed format in UTC, so stored timestamps compare correctly as text.
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _statements(script: str) -> Iterator[str]:
    """Split a schema file into statements (sqlite3's execute runs one at a time)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    # A last statement without its semicolon still runs (and an incomplete one fails loudly);
    # trailing comments and blank lines are nothing to run.
    if any(line.strip() and not line.strip().startswith("--") for line in buffer.splitlines()):
        yield buffer.strip()


def _one_of(column: str, values: Sequence[object]) -> tuple[str, Sequence[object]]:
    return f"{column} IN ({', '.join('?' * len(values))})", values


# Claims' expires_at is Unix time as REAL, on the clock every process on the machine shares;
# julianday('now') is that clock (unixepoch('subsec') needs SQLite 3.42).
_CLOCK = "((julianday('now') - 2440587.5) * 86400.0)"
SQLITE = Dialect(
    mark="?",
    clock=_CLOCK,
    lease_end=f"({_CLOCK} + ?)",
    # The format of _timestamp (SQLite's clock has milliseconds), so text comparisons hold.
    stamp_now="(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000+00:00')",
    stamp_type="TEXT",
    encode_time=_timestamp,
    decode_time=lambda value: datetime.fromisoformat(str(value)),
    encode_json=lambda value: json.dumps(value, sort_keys=True),
    decode_json=lambda value: json.loads(str(value)),
    one_of=_one_of,
    statements=_statements,
)


class SqliteCaptionRepository(SqlCatalogue, TableRows):
    """Implements the CaptionRepository, KeyRing and CatalogueTables ports; safe to share
    between threads.

    The keys live in the catalogue's database, so every replica sharing it sees a revocation.

    Connections come from a small pool: each operation borrows one and gives it back, so a
    connection is never used by two threads at once, and the number of open connections is
    the peak number of concurrent operations, however many threads come and go.
    """

    dialect = SQLITE
    full_text = FTS5
    # SQLite's planner would not take the partial index of first records by itself.
    firsts = "images AS f INDEXED BY images_firsts"
    duplicate_key = (sqlite3.IntegrityError,)

    def __init__(
        self, database: Path, busy_timeout_ms: int = 10_000, claim_poll_s: float = _CLAIM_POLL_S
    ) -> None:
        self._database = Path(database)
        self.claim_poll_s = claim_poll_s
        self._busy_timeout_ms = busy_timeout_ms
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._open: list[sqlite3.Connection] = []
        self._open_lock = threading.Lock()
        self._database.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    @property
    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

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

    def _reading(self) -> contextlib.AbstractContextManager[Executes]:
        return self._borrow()

    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._transaction(durable=True)

    def _leasing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._transaction(durable=False)

    @contextlib.contextmanager
    def _transaction(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """One write transaction; a full or failing disk becomes a storage fault.

        Not ``durable`` (claims' leases): synchronous = NORMAL for this commit only, so it
        reaches the WAL, which every connection and process reads at once, without an fsync;
        the next FULL commit syncs it along with its own.
        """
        try:
            with self._borrow() as db, _Synchronous(db, durable), _Write(db):
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
        started together on one data dir)."""
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

    def _shapes(self, db: Executes) -> list[Shape]:
        tables = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name", ()
        ).fetchall()
        virtual = [name for name, sql in tables if str(sql).startswith("CREATE VIRTUAL")]
        shapes = []
        for name, _sql in tables:
            # A virtual table is kept by its triggers; its shadow tables are its own.
            shadow = any(name.startswith(v) for v in virtual)
            if name.startswith("sqlite_") or shadow or not holds_library(name):
                continue
            # cid, name, type, notnull, default, pk, hidden (generated columns: 2 and 3)
            info = db.execute(f"PRAGMA table_xinfo({name})", ()).fetchall()
            plain = [row for row in info if row[6] == 0]
            key = next(row for row in plain if row[5] == 1)
            columns = (key[1], *(row[1] for row in plain if row is not key))
            parents = db.execute(f"PRAGMA foreign_key_list({name})", ()).fetchall()
            shapes.append(
                Shape(
                    Table(name, columns, tuple(sorted({row[2] for row in parents}))),
                    text_key=str(key[2]).upper() == "TEXT",
                    unix_time=unix_time_columns(
                        row[1] for row in plain if str(row[2]).upper() == "REAL"
                    ),
                    counted=str(key[2]).upper() == "INTEGER",
                )
            )
        return shapes

    def _insert_many(self, db: Executes, sql: str, rows: Sequence[Sequence[Value]]) -> None:
        assert isinstance(db, sqlite3.Connection)
        db.executemany(sql, rows)

    def _migrate(self) -> None:
        # BEGIN IMMEDIATE is the migration lock: processes opening the file together apply
        # each step once, in order, and the others find them applied.
        with self._borrow() as db:
            self._use_wal(db)
            with _Write(db):
                upgrade(
                    db,
                    schema_steps("sqlite"),
                    SQLITE,
                    f"database {self._database}",
                    legacy=_OneRowVersion(),
                )


class _OneRowVersion:
    """The one-row ``schema_version`` table captioners before the schema files kept."""

    def version(self, db: Executes) -> int:
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'", ()
        ).fetchone()
        row = db.execute("SELECT version FROM schema_version", ()).fetchone() if exists else None
        return int(row[0]) if row else 0

    def record(self, db: Executes, version: int) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", ())
        if db.execute("UPDATE schema_version SET version = ?", (version,)).rowcount == 0:
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


class _Synchronous:
    """``PRAGMA synchronous`` NORMAL for one transaction when it need not be durable, back to
    FULL after it (also after a failed one, before the connection goes back to the pool)."""

    def __init__(self, db: sqlite3.Connection, durable: bool) -> None:
        self._db = db
        self._durable = durable

    def __enter__(self) -> None:
        if not self._durable:
            self._db.execute("PRAGMA synchronous = NORMAL")

    def __exit__(self, *exc_info: object) -> None:
        if not self._durable:
            self._db.execute("PRAGMA synchronous = FULL")


class _Write:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so busy_timeout applies."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


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
