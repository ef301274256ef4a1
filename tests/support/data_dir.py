"""Looking into a data dir from outside the service: its image files, its rows, a snapshot."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

DATABASE = "captioner.sqlite3"
DATABASE_FILES = {DATABASE, DATABASE + "-wal", DATABASE + "-shm"}


def rows(data_dir: Path) -> list[tuple[Any, ...]]:
    """Every row of the images table, read-only (a reader must not checkpoint the WAL)."""
    database = data_dir / DATABASE
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute("SELECT * FROM images ORDER BY id").fetchall()


def row_paths(data_dir: Path) -> set[str]:
    return {str(row[2]) for row in rows(data_dir)}


def stored_images(data_dir: Path) -> list[str]:
    """Every file in the data dir that is not the database, relative and sorted."""
    return sorted(
        path.relative_to(data_dir).as_posix()
        for path in data_dir.rglob("*")
        if path.is_file() and path.name not in DATABASE_FILES
    )


def claims(data_dir: Path) -> list[tuple[Any, ...]]:
    """Claims on captions in progress (none once every upload has finished, well or not)."""
    database = data_dir / DATABASE
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'caption_claims'").fetchone():
            return []
        return db.execute("SELECT * FROM caption_claims").fetchall()


def snapshot(
    data_dir: Path,
) -> tuple[dict[str, str], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every file but the database's with its hash, every row, and every claim left.

    The database is compared by what it holds: a caption that failed took a claim and gave
    it back, which rewrites SQLite's files without changing anything stored.
    """
    files = {
        path.relative_to(data_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and path.name not in DATABASE_FILES
    }
    return files, rows(data_dir), claims(data_dir)


def contents(data_dir: Path) -> tuple[dict[str, str], list[tuple[Any, ...]]]:
    """The images with their hashes, and the rows: what must survive, whatever SQLite's files do."""
    images = {path: sha256_of(data_dir / path) for path in stored_images(data_dir)}
    return images, rows(data_dir)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
