"""The image record as table rows: its columns, a row back into a record, a new one's values."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any

from captioner.adapters.catalogue.dialect import Dialect
from captioner.domain.access import ApiKey, Scope
from captioner.domain.model import ImageRecord, NewImageRecord, Provenance, record_status

# Provenance is one field of the record but two columns of the table.
_COLUMNS_OF_FIELD = {"provenance": ("model_revision", "generation")}


def _columns(record: type[Any]) -> tuple[str, ...]:
    return tuple(
        column
        for field in dataclasses.fields(record)
        for column in _COLUMNS_OF_FIELD.get(field.name, (field.name,))
    )


# The images table's columns in ImageRecord's order: every SELECT of a record reads these.
RECORD_COLUMNS = _columns(ImageRecord)
# What a new record gives; the catalogue adds id and created_at.
NEW_COLUMNS = _columns(NewImageRecord)
COLUMNS = ", ".join(RECORD_COLUMNS)
_NEW_FIELDS = [field.name for field in dataclasses.fields(NewImageRecord)]
_AT = _NEW_FIELDS.index("provenance")


def _getter(names: Sequence[str]) -> Callable[[NewImageRecord], tuple[object, ...]]:
    # Made once: a new record's values are read on every insert (attrgetter of one name
    # gives the value itself, not a tuple).
    get = operator.attrgetter(*names)
    return (lambda record: (get(record),)) if len(names) == 1 else get


_BEFORE_PROVENANCE = _getter(_NEW_FIELDS[:_AT])
_AFTER_PROVENANCE = _getter(_NEW_FIELDS[_AT + 1 :])
KEY_COLUMNS = "k.name, k.scope, k.created_at, k.last_used_at"


def columns_of(alias: str) -> str:
    """``COLUMNS`` of the table named ``alias`` in a join."""
    return ", ".join(f"{alias}.{column}" for column in RECORD_COLUMNS)


def record_of(row: Sequence[Any], dialect: Dialect) -> ImageRecord:
    """The record a row of ``RECORD_COLUMNS`` holds (a longer row's extra values are ignored)."""
    # Unpacked by position, in RECORD_COLUMNS' order: a listing maps thousands of rows.
    (rid, sha, path, text, model, prompt, created, width, height, ctype, name) = row[:11]
    revision, generation, duration, status, failure, attempts = row[11:17]
    return ImageRecord(
        id=int(rid),
        sha256=str(sha),
        path=str(path),
        description=str(text),
        model=str(model),
        prompt=str(prompt),
        created_at=dialect.decode_time(created),
        width=int(width),
        height=int(height),
        content_type=str(ctype),
        original_name=None if name is None else str(name),
        provenance=Provenance.of(
            None if revision is None else str(revision), dialect.decode_json(generation)
        ),
        duration_ms=None if duration is None else float(duration),
        status=record_status(str(status)),
        failure=None if failure is None else str(failure),
        attempts=int(attempts),
    )


def new_values(new: NewImageRecord, dialect: Dialect) -> tuple[object, ...]:
    """The values of ``NEW_COLUMNS`` for ``new``."""
    provenance = new.provenance
    return (
        *_BEFORE_PROVENANCE(new),
        provenance.model_revision,
        dialect.encode_json(provenance.settings),
        *_AFTER_PROVENANCE(new),
    )


def key_of(row: Sequence[Any], dialect: Dialect) -> ApiKey:
    """The API key a row of ``KEY_COLUMNS`` holds."""
    name, scope, created, used = row[:4]
    return ApiKey(
        name=str(name),
        scope=Scope(str(scope)),
        created_at=dialect.decode_time(created),
        last_used_at=None if used is None else dialect.decode_time(used),
    )
