"""The image record as table rows: its columns, a row back into a record, a new one's values."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from captioner.adapters.catalogue.dialect import Dialect
from captioner.domain.model import ApiKey, ImageRecord, NewImageRecord, Provenance, Scope

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
KEY_COLUMNS = "k.name, k.scope, k.created_at, k.last_used_at"


def columns_of(alias: str) -> str:
    """``COLUMNS`` of the table named ``alias`` in a join."""
    return ", ".join(f"{alias}.{column}" for column in RECORD_COLUMNS)


def record_of(row: Sequence[Any], dialect: Dialect) -> ImageRecord:
    """The record a row of ``RECORD_COLUMNS`` holds (a longer row's extra values are ignored)."""
    # Unpacked by position, in RECORD_COLUMNS' order: a listing maps thousands of rows.
    (rid, sha, path, text, model, prompt, created, width, height, ctype, name) = row[:11]
    revision, generation, duration = row[11:14]
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
    )


def new_values(new: NewImageRecord, dialect: Dialect) -> tuple[object, ...]:
    """The values of ``NEW_COLUMNS`` for ``new``."""
    values: dict[str, object] = {
        field.name: getattr(new, field.name) for field in dataclasses.fields(new)
    }
    values["model_revision"] = new.provenance.model_revision
    values["generation"] = dialect.encode_json(new.provenance.settings)
    return tuple(values[column] for column in NEW_COLUMNS)


def key_of(row: Sequence[Any], dialect: Dialect) -> ApiKey:
    """The API key a row of ``KEY_COLUMNS`` holds."""
    name, scope, created, used = row[:4]
    return ApiKey(
        name=str(name),
        scope=Scope(str(scope)),
        created_at=dialect.decode_time(created),
        last_used_at=None if used is None else dialect.decode_time(used),
    )
