"""The catalogue's tables as plain rows (CatalogueTables), read from the schema each engine has."""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from captioner.adapters.catalogue.dialect import Dialect
from captioner.adapters.catalogue.sql import Executes
from captioner.domain.errors import CopyRefused
from captioner.domain.ports import Row, Table, TableChanges, Value

# Not the library: the schema's own history, runs in progress (claims, workers' heartbeats,
# deletes in flight) that the target's replicas take anew, and wrong-key counts that expire
# within minutes. SQLite's search index is rebuilt by its triggers from the rows copied,
# PostgreSQL's is a generated column.
_NOT_COPIED = frozenset(
    {
        "schema_migrations",
        "schema_version",
        "caption_claims",
        "workers",
        "recent_hits",
        "bytes_deletes",
    }
)
# Columns the engines store differently: instants (SQLite: ISO text or Unix seconds as REAL;
# PostgreSQL: TIMESTAMPTZ) and JSON (text; JSONB).
_INSTANTS = frozenset(
    {"created_at", "last_used_at", "expires_at", "next_attempt_at", "seen_at", "applied_at"}
)
_JSON = frozenset({"generation"})


@dataclass(frozen=True)
class Shape:
    """What an engine's schema says of one table: columns (key first), text key, Unix-time
    columns, the tables it refers to, and whether the engine counts its integer key."""

    table: Table
    text_key: bool
    unix_time: frozenset[str] = frozenset()
    counted: bool = False


def instant_text(value: Any) -> str:
    """An instant as every engine can hold it: ISO 8601 in UTC, with microseconds."""
    if isinstance(value, (int, float)):
        when = datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, datetime):
        when = value
    else:
        when = datetime.fromisoformat(str(value))
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def holds_library(table: str) -> bool:
    """Whether ``table`` is part of the library a copy carries."""
    return table not in _NOT_COPIED


def unix_time_columns(numeric: Iterable[str]) -> frozenset[str]:
    """Which of a table's numeric columns hold instants (as Unix seconds)."""
    return frozenset(numeric) & _INSTANTS


class TableRows(abc.ABC):
    """CatalogueTables over an engine's connections; the engine says what its schema holds."""

    dialect: Dialect
    # What the driver raises when an insert meets a taken unique key.
    duplicate_key: tuple[type[BaseException], ...] = ()
    # Appended to a text key to order and compare it by code point, as the other engine does.
    by_code_point: str = ""

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[Executes]: ...

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[Executes]: ...

    @abc.abstractmethod
    def _shapes(self, db: Executes) -> list[Shape]:
        """Every table of the schema, as this engine describes it."""

    def _advance_key(self, db: Executes, shape: Shape) -> None:
        """Move the engine's counter of ``shape``'s key past the keys there now."""
        return  # SQLite's AUTOINCREMENT moves on by itself when a larger key is inserted

    def _insert_many(self, db: Executes, sql: str, rows: Sequence[Sequence[Value]]) -> None:
        """Run ``sql`` once per row (an engine with a batch call overrides this)."""
        for row in rows:
            db.execute(sql, row)

    def tables(self) -> Sequence[Table]:
        return [shape.table for shape in self._library_shapes()]

    def rows(
        self, table: Table, after: Value, limit: int | None, until: Value = None
    ) -> Sequence[Row]:
        shape = self._shape(table.name)
        p = self.dialect.mark
        key = table.key + (self.by_code_point if shape.text_key else "")
        where, params = ["1 = 1"], list[Value]()
        if after is not None:
            where.append(f"{key} > {p}")
            params.append(after)
        if until is not None:
            where.append(f"{key} <= {p}")
            params.append(until)
        tail = ""
        if limit is not None:
            tail = f" LIMIT {p}"
            params.append(limit)
        with self._reading() as db:
            found = db.execute(
                f"SELECT {', '.join(table.columns)} FROM {table.name} "
                f"WHERE {' AND '.join(where)} ORDER BY {key}{tail}",
                params,
            ).fetchall()
        return [self._plain_row(table.columns, row) for row in found]

    def write(self, table: Table, changes: TableChanges) -> None:
        shape = self._shape(table.name)
        try:
            self._apply(shape, changes)
        except self.duplicate_key as error:
            # Rows written to the target since the copy began (a replica already serving it).
            raise CopyRefused(
                f"the target's {table.name} already holds a row with the same unique values "
                f"as one being copied, under another {table.key} ({str(error).splitlines()[0]}): "
                "it is being written to; stop what writes to it, or copy into an empty database"
            ) from error

    def _apply(self, shape: Shape, changes: TableChanges) -> None:
        table = shape.table
        p = self.dialect.mark
        columns = table.columns
        with self._writing() as db:
            for key in changes.delete:
                db.execute(f"DELETE FROM {table.name} WHERE {table.key} = {p}", (key,))
            assignments = ", ".join(f"{column} = {p}" for column in columns[1:])
            for row in changes.update:
                values = self._stored_row(shape, row)
                db.execute(
                    f"UPDATE {table.name} SET {assignments} WHERE {table.key} = {p}",
                    (*values[1:], values[0]),
                )
            insert = (
                f"INSERT INTO {table.name} ({', '.join(columns)}) "
                f"VALUES ({self.dialect.marks(len(columns))})"
            )
            self._insert_many(db, insert, [self._stored_row(shape, row) for row in changes.insert])
            if shape.counted and changes.insert:
                self._advance_key(db, shape)

    def _library_shapes(self) -> list[Shape]:
        # Read once: the schema was migrated when the catalogue opened, and a copy asks
        # for each table's shape on every batch.
        known: list[Shape] | None = getattr(self, "_known_shapes", None)
        if known is None:
            with self._reading() as db:
                shapes = self._shapes(db)
            known = [shape for shape in shapes if holds_library(shape.table.name)]
            self._known_shapes = known
        return known

    def _shape(self, name: str) -> Shape:
        for shape in self._library_shapes():
            if shape.table.name == name:
                return shape
        raise LookupError(f"no table {name} in the catalogue")

    def _plain_row(self, columns: Sequence[str], row: Sequence[Any]) -> Row:
        return tuple(self._plain(column, value) for column, value in zip(columns, row, strict=True))

    def _plain(self, column: str, value: Any) -> Value:
        if value is None:
            return None
        if column in _INSTANTS:
            return instant_text(value)
        if column in _JSON:
            return json.dumps(self.dialect.decode_json(value), sort_keys=True)
        return value  # type: ignore[no-any-return]

    def _stored_row(self, shape: Shape, row: Row) -> tuple[Value, ...]:
        return tuple(
            datetime.fromisoformat(value).timestamp()
            if column in shape.unix_time and isinstance(value, str)
            else value
            for column, value in zip(shape.table.columns, row, strict=True)
        )
