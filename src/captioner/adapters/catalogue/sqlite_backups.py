"""Backups of the SQLite catalogue through SQLite's online backup API: consistent under WAL
while writers go on, and put back the same way, in one transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from captioner.adapters.catalogue.migrations import newer_than_known
from captioner.domain.model import CatalogueSnapshot

_HEADER = b"SQLite format 3\x00"


class SqliteCatalogueBackups:
    """Implements the CatalogueBackups port for the catalogue file ``database``."""

    engine = "sqlite"
    file_name = "catalogue.sqlite3"

    def __init__(self, database: Path, busy_timeout_ms: int = 10_000) -> None:
        self._database = Path(database)
        self._busy_timeout_ms = busy_timeout_ms

    def snapshot(self, target: Path) -> CatalogueSnapshot:
        # One backup step (pages=-1) copies every page inside one read transaction: the
        # copy is the database as of that instant, and WAL writers are not held up.
        with (
            _connected(self._database, self._busy_timeout_ms) as source,
            _connected(target, self._busy_timeout_ms) as copy,
        ):
            source.backup(copy)
            # A rollback-journal file is whole by itself: no -wal beside it to lose.
            copy.execute("PRAGMA journal_mode = DELETE")
            # The copy's commits were synced (synchronous=FULL); the manifest, written
            # last, syncs the folder that names it.
            snapshot = _contents(copy)
        return snapshot

    def problem_with(self, copy: Path) -> str | None:
        try:
            with copy.open("rb") as file:
                if file.read(len(_HEADER)) != _HEADER:
                    return f"{copy.name} is not an SQLite database"
            with _read_only(copy) as db:
                verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
                if verdict != ["ok"]:
                    return f"{copy.name} is damaged: " + "; ".join(verdict[:3])
                version = _schema_version(db)
        except sqlite3.DatabaseError as error:
            return f"{copy.name} is damaged: {error}"
        except OSError as error:
            return f"{copy.name} cannot be read: {error}"
        return newer_than_known(copy.name, version, "sqlite")

    def holds_a_library(self) -> bool:
        if not self._database.is_file():
            return False
        with _read_only(self._database, immutable=False) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            held = [
                db.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]
                for table in ("images", "api_keys")
                if table in tables
            ]
        return any(held)

    def restore(self, copy: Path) -> None:
        self._database.parent.mkdir(parents=True, exist_ok=True)
        # The backup API writes the pages through SQLite, in one transaction: whatever
        # journal (or stale -wal) the target has is dealt with, and a crash changes nothing.
        with _read_only(copy) as source, _connected(self._database, self._busy_timeout_ms) as db:
            source.backup(db)
            db.execute("PRAGMA journal_mode = WAL")


def _contents(db: sqlite3.Connection) -> CatalogueSnapshot:
    records, images = db.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone()
    keys = db.execute("SELECT count(*) FROM api_keys").fetchone()[0]
    paths = frozenset(row[0] for row in db.execute("SELECT DISTINCT path FROM images"))
    return CatalogueSnapshot(
        engine=SqliteCatalogueBackups.engine,
        schema_version=_schema_version(db),
        records=int(records),
        images=int(images),
        keys=int(keys),
        paths=paths,
    )


def _schema_version(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0])


@contextlib.contextmanager
def _connected(database: Path, busy_timeout_ms: int) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        yield connection
    finally:
        connection.close()


@contextlib.contextmanager
def _read_only(database: Path, immutable: bool = True) -> Iterator[sqlite3.Connection]:
    # immutable: a backup's file is read as it lies, with no -shm or -wal made beside it.
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?{flags}", uri=True)
    try:
        yield connection
    finally:
        connection.close()
