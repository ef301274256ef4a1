"""Copying a catalogue and a store: resumable, verified, and refusing to mix two libraries."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from captioner.domain.catalogue_copy import copy_catalogue, table_sum
from captioner.domain.errors import CopyRefused
from captioner.domain.model import ImageDigest
from captioner.domain.ports import Row, Table, TableChanges, Value
from captioner.domain.store_copy import Thumbnails, copy_store, stored_paths
from tests.support.fakes import IMAGE_MAGIC, InMemoryImageStore, InMemoryThumbnailStore

IMAGES = Table("images", ("id", "sha256", "description", "created_at"))
KEYS = Table("api_keys", ("name", "key_sha256", "created_at"))
SESSIONS = Table("api_sessions", ("token_sha256", "key_name"), parents=("api_keys",))


class MemoryTables:
    """CatalogueTables in memory; ``fail_after`` writes, the next one raises (a kill)."""

    def __init__(self, tables: Sequence[Table] = (SESSIONS, IMAGES, KEYS)) -> None:
        self._tables = list(tables)
        self.rows_of: dict[str, dict[Value, Row]] = {table.name: {} for table in tables}
        self.writes: list[str] = []
        self.fail_after: int | None = None

    def tables(self) -> Sequence[Table]:
        return self._tables

    def rows(
        self, table: Table, after: Value, limit: int | None, until: Value = None
    ) -> Sequence[Row]:
        keys = sorted(self.rows_of[table.name])  # type: ignore[type-var]
        chosen = [
            self.rows_of[table.name][key]
            for key in keys
            if (after is None or key > after) and (until is None or key <= until)  # type: ignore[operator]
        ]
        return chosen[:limit] if limit is not None else chosen

    def write(self, table: Table, changes: TableChanges) -> None:
        if self.fail_after is not None and len(self.writes) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        rows = self.rows_of[table.name]
        for key in changes.delete:
            del rows[key]
        for row in (*changes.update, *changes.insert):
            rows[row[0]] = row
        self.writes.append(table.name)

    def put(self, table: Table, *rows: Row) -> None:
        for row in rows:
            self.rows_of[table.name][row[0]] = row


def library(images: int = 25) -> MemoryTables:
    tables = MemoryTables()
    tables.put(
        IMAGES,
        *[
            (n, f"{n:064x}", f"caption {n}", f"2026-01-01T00:00:{n % 60:02}.000000+00:00")
            for n in range(1, images + 1)
        ],
    )
    tables.put(KEYS, ("admin", "a" * 64, "2026-01-01T00:00:00.000000+00:00"))
    tables.put(SESSIONS, ("b" * 64, "admin"))
    return tables


def test_a_copy_into_an_empty_catalogue_has_every_row_and_the_same_sums() -> None:
    source, target = library(), MemoryTables()

    copied = copy_catalogue(source, target, batch=10)

    assert copied.matches
    assert {t.name: t.inserted for t in copied.tables} == {
        "images": 25,
        "api_keys": 1,
        "api_sessions": 1,
    }
    assert target.rows_of == source.rows_of
    assert target.writes.index("api_keys") < target.writes.index("api_sessions")


def test_a_killed_copy_run_again_continues_and_ends_with_the_same_sums() -> None:
    source, target = library(), MemoryTables()
    target.fail_after = 2  # keys, then one batch of images; the second batch is killed
    with pytest.raises(KeyboardInterrupt):
        copy_catalogue(source, target, batch=10)
    target.fail_after = None

    copied = copy_catalogue(source, target, batch=10)

    images = next(t for t in copied.tables if t.name == "images")
    assert (images.unchanged, images.inserted) == (10, 15)
    assert copied.matches
    assert table_sum(target, IMAGES) == table_sum(source, IMAGES)


def test_another_librarys_rows_at_the_same_ids_are_refused_before_anything_is_written() -> None:
    source, target = library(), MemoryTables()
    target.put(IMAGES, (20, "f" * 64, "someone else's", "2025-05-05T00:00:00.000000+00:00"))

    with pytest.raises(CopyRefused, match="other data at images id 20"):
        copy_catalogue(source, target, batch=10)

    assert target.writes == []


def test_rows_changed_in_the_source_since_an_earlier_copy_are_updated() -> None:
    source, target = library(), MemoryTables()
    copy_catalogue(source, target)
    source.put(IMAGES, (3, f"{3:064x}", "a person's words", "2026-01-01T00:00:03.000000+00:00"))

    copied = copy_catalogue(source, target)

    assert next(t for t in copied.tables if t.name == "images").updated == 1
    assert target.rows_of["images"][3][2] == "a person's words"
    assert copied.matches


def test_rows_deleted_in_the_source_since_are_refused_or_pruned() -> None:
    source, target = library(), MemoryTables()
    copy_catalogue(source, target)
    del source.rows_of["images"][25], source.rows_of["images"][4]

    with pytest.raises(CopyRefused, match="--prune"):
        copy_catalogue(source, target)
    pruned = copy_catalogue(source, target, prune=True)

    assert next(t for t in pruned.tables if t.name == "images").deleted == 2
    assert pruned.matches


def test_a_source_written_during_the_copy_is_reported_as_differing() -> None:
    source, target = library(), MemoryTables()

    def written_meanwhile(table: str, rows: int) -> None:
        if table == "images" and rows:
            source.put(IMAGES, (99, "9" * 64, "new", "2026-01-02T00:00:00.000000+00:00"))

    copied = copy_catalogue(source, target, batch=100, on_rows=written_meanwhile)

    assert not copied.matches
    assert copy_catalogue(source, target).matches


def test_a_target_without_a_table_of_the_source_is_refused() -> None:
    with pytest.raises(CopyRefused, match="no table api_sessions"):
        copy_catalogue(library(), MemoryTables([IMAGES, KEYS]))


def image(n: int) -> tuple[str, bytes]:
    data = IMAGE_MAGIC + bytes([n]) * 10
    digest = hashlib.sha256(data).hexdigest()
    return f"uploads/{digest[:2]}/{digest[2:4]}/{digest}.png", data


def test_a_store_copy_checks_each_file_and_a_second_run_skips_what_is_there() -> None:
    source, target = InMemoryImageStore(), InMemoryImageStore()
    for n in range(5):
        path, data = image(n)
        source.files[path] = data
    source.files["uploads/ab/cd/stray.tmp"] = b"half-written"
    damaged, _ = image(9)
    source.files[damaged] = b"not the bytes its name says"

    first = copy_store(source, target, stored_paths(source))
    second = copy_store(source, target, stored_paths(source))

    assert (first.copied, first.damaged_in_source) == (5, [damaged])
    assert (second.copied, second.already_there) == (0, 5)
    assert not first.complete
    assert all(
        target.digest_of(path) == ImageDigest(path.rsplit("/", 1)[1].split(".")[0])
        for path in target.files
    )


def test_a_store_copy_never_overwrites_other_bytes_in_the_target() -> None:
    source, target = InMemoryImageStore(), InMemoryImageStore()
    path, data = image(1)
    source.files[path] = data
    target.files[path] = b"damaged"

    copied = copy_store(source, target, stored_paths(source))

    assert copied.damaged_in_target == [path]
    assert target.files[path] == b"damaged"


def test_thumbnails_the_source_has_are_made_on_the_target() -> None:
    source, target = InMemoryImageStore(), InMemoryImageStore()
    thumbs = Thumbnails(InMemoryThumbnailStore(), InMemoryThumbnailStore())
    for n in range(3):
        path, data = image(n)
        source.files[path] = data
    first_path, first_data = image(0)
    thumbs.source.open_or_make(ImageDigest.of_bytes(first_data), lambda: source.open(first_path))

    copied = copy_store(source, target, stored_paths(source), thumbs)

    assert copied.thumbnails == 1
    assert list(thumbs.target.digests()) == [ImageDigest.of_bytes(first_data)]
