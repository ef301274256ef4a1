"""Copying a catalogue into another (SQLite to PostgreSQL and back): resumable, then verified."""

from __future__ import annotations

import graphlib
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from captioner.domain.errors import CopyRefused
from captioner.domain.ports import CatalogueTables, Row, Table, TableChanges, Value

BATCH = 500
# Columns that never change once a row is written: a row at the same key that differs in
# one of these is another library's, not this one's moved on.
_FIXED_SUFFIXES = ("sha256",)
_FIXED_NAMES = ("created_at",)


@dataclass(frozen=True)
class TableSum:
    """How many rows a table holds and a SHA-256 of their contents, in key order."""

    rows: int
    sha256: str


@dataclass
class TableCopied:
    """What one table's copy did, and both sides' sums once it was done."""

    name: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    source: TableSum | None = None
    target: TableSum | None = None

    @property
    def matches(self) -> bool:
        return self.source is not None and self.source == self.target


@dataclass
class CatalogueCopied:
    """The copy's outcome, table by table, and how long copying and verifying took."""

    tables: list[TableCopied] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def matches(self) -> bool:
        return all(table.matches for table in self.tables)

    @property
    def rows_written(self) -> int:
        return sum(table.inserted + table.updated + table.deleted for table in self.tables)


def copy_catalogue(
    source: CatalogueTables,
    target: CatalogueTables,
    prune: bool = False,
    batch: int = BATCH,
    on_rows: Callable[[str, int], None] = lambda table, rows: None,
) -> CatalogueCopied:
    """Copy every table of ``source`` into ``target`` in key order, a batch per transaction.

    Rows the target already has the same are skipped, so a copy that was stopped continues
    where it was; rows the source changed since (same key and fixed columns) are updated;
    a target holding other data at the same keys is refused before anything is written.
    Rows the target has and the source no longer does are deleted with ``prune``, else
    refused. Each table's count and checksum are then read again from both sides.
    """
    started = time.monotonic()
    tables = _in_order(source.tables())
    theirs = {table.name: table for table in target.tables()}
    for table in tables:
        _require_columns(table, theirs.get(table.name))
    for table in tables:
        # A target with rows is checked whole first: a refusal writes nothing.
        if target.rows(table, None, 1):
            _walk(source, target, table, prune, batch, write=False)
    copied = CatalogueCopied()
    for table in tables:
        copied.tables.append(_walk(source, target, table, prune, batch, True, on_rows))
    copied.seconds = time.monotonic() - started
    for table, done in zip(tables, copied.tables, strict=True):
        done.source = table_sum(source, table, batch)
        done.target = table_sum(target, table, batch)
    copied.verify_seconds = time.monotonic() - started - copied.seconds
    return copied


def table_sum(tables: CatalogueTables, table: Table, batch: int = BATCH) -> TableSum:
    """The table's row count and the SHA-256 of its rows as JSON lines, in key order."""
    digest = hashlib.sha256()
    count = 0
    after = None
    while rows := tables.rows(table, after, batch):
        for row in rows:
            digest.update(json.dumps(row).encode())
            digest.update(b"\n")
        count += len(rows)
        after = rows[-1][0]
    return TableSum(count, digest.hexdigest())


def _in_order(tables: Sequence[Table]) -> list[Table]:
    """Parents before the tables whose rows refer to theirs."""
    by_name = {table.name: table for table in tables}
    graph = {table.name: [p for p in table.parents if p in by_name] for table in tables}
    return [by_name[name] for name in graphlib.TopologicalSorter(graph).static_order()]


def _require_columns(table: Table, theirs: Table | None) -> None:
    if theirs is None:
        raise CopyRefused(f"the target has no table {table.name}: is it a captioner catalogue?")
    missing = [column for column in table.columns if column not in theirs.columns]
    if missing or theirs.key != table.key:
        raise CopyRefused(
            f"the target's table {table.name} lacks the columns {', '.join(missing)}: "
            "upgrade the captioner that serves it"
        )


def _fixed(table: Table) -> list[int]:
    return [
        index
        for index, column in enumerate(table.columns)
        if column in _FIXED_NAMES or column.endswith(_FIXED_SUFFIXES)
    ]


def _walk(
    source: CatalogueTables,
    target: CatalogueTables,
    table: Table,
    prune: bool,
    batch: int,
    write: bool,
    on_rows: Callable[[str, int], None] = lambda table, rows: None,
) -> TableCopied:
    """Merge the source's rows into the target's, batch by batch (each batch is one write)."""
    done = TableCopied(table.name)
    fixed = _fixed(table)
    after = None
    while True:
        rows = source.rows(table, after, batch)
        # The target's rows in the same key range: the last batch's range runs to the end.
        until = rows[-1][0] if len(rows) == batch else None
        present = {row[0]: row for row in target.rows(table, after, None, until)}
        changes = _changes(table, rows, present, fixed, prune, done)
        if write and (changes.insert or changes.update or changes.delete):
            target.write(table, changes)
        on_rows(table.name, len(rows))
        if until is None:
            return done
        after = until


def _changes(
    table: Table,
    rows: Sequence[Row],
    present: dict[Value, Row],
    fixed: list[int],
    prune: bool,
    done: TableCopied,
) -> TableChanges:
    changes = TableChanges()
    for row in rows:
        theirs = present.pop(row[0], None)
        if theirs is None:
            changes.insert.append(row)
            done.inserted += 1
        elif theirs == row:
            done.unchanged += 1
        elif all(theirs[i] == row[i] for i in fixed):
            changes.update.append(row)
            done.updated += 1
        else:
            raise CopyRefused(
                f"the target holds other data at {table.name} {table.key} {row[0]!r} "
                "(another library's?): copy into an empty database"
            )
    if present and not prune:
        keys = sorted(present, key=str)[:5]
        raise CopyRefused(
            f"the target's {table.name} has {len(present)} rows the source does not "
            f"({table.key} {', '.join(map(repr, keys))}...): deleted in the source since an "
            "earlier copy, or another library's. Add --prune to delete them from the target"
        )
    changes.delete.extend(present)
    done.deleted += len(present)
    return changes
