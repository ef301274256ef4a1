"""Databases made by every earlier schema version upgrade in place, rows and features intact."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from captioner.adapters.catalogue.migrations import schema_steps
from captioner.adapters.catalogue.rows import RECORD_COLUMNS
from captioner.adapters.catalogue.sql import SqlCatalogue
from captioner.domain.access import ApiKey, Scope
from captioner.domain.model import CaptionChoice, CaptionKey, Provenance
from captioner.domain.throttle import Rate, Throttle
from tests.support.old_schemas import (
    SHIPPED,
    build_postgres,
    build_sqlite,
    normalised,
    shipped_steps,
)
from tests.support.postgres import PostgresServer
from tests.support.records import new_record as new

INTERNAL_COLUMNS = {"image_id", "priority", "next_attempt_at"}
OLD = "b" * 64  # the digest of the image the old captioner stored
LIVE = CaptionKey("c" * 64, "m", "")  # a claim the old captioner holds (its lease runs on)
STALE = CaptionKey("d" * 64, "m", "")  # a claim an old captioner died with
WHEN = "2025-01-01T00:00:00.000000+00:00"


@dataclass
class OldDatabase:
    """A database an earlier captioner left at ``version``, with something in every table."""

    engine: str
    version: int
    # At which version each table appeared, on this engine.
    claims_from: int
    keys_from: int
    execute: Callable[[str, tuple[Any, ...]], None]
    open: Callable[[], SqlCatalogue]
    rows: Callable[[str], list[tuple[Any, ...]]]
    script: Callable[[str], None]  # runs a schema file as sqlite3's .read or psql would
    # Another database on the same engine, made by the old steps at the version given.
    another: Callable[[int], OldDatabase]

    def opened_fresh(self) -> OldDatabase:
        """Another database, empty until the catalogue opened it: today's schema, from scratch."""
        fresh = self.another(0)
        fresh.open().close()
        return fresh


def sqlite_at(version: int, tmp_path: Path, name: str = "old") -> OldDatabase:
    from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository

    database = tmp_path / f"{name}.sqlite3"
    build_sqlite(database, version)

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        with closing(sqlite3.connect(database)) as db, db:
            db.execute(sql.replace("%s", "?"), params)

    def rows(sql: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(database)) as db:
            return db.execute(sql).fetchall()

    def script(sql: str) -> None:
        with closing(sqlite3.connect(database)) as db:
            db.executescript(sql)

    def another(version: int) -> OldDatabase:
        return sqlite_at(version, tmp_path, f"{name}-{len(list(tmp_path.iterdir()))}")

    return OldDatabase(
        "sqlite",
        version,
        4,
        5,
        execute,
        lambda: SqliteCaptionRepository(database),
        rows,
        script,
        another,
    )


def postgres_at(version: int, server: PostgresServer) -> OldDatabase:
    from captioner.adapters.catalogue.postgres import PostgresCaptionRepository

    url = server.url(server.create_database())
    build_postgres(url, version)

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(url) as db:
            db.execute(sql, params)

    def rows(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as db:
            return db.execute(sql).fetchall()

    def another(version: int) -> OldDatabase:
        return postgres_at(version, server)

    return OldDatabase(
        "postgres",
        version,
        2,
        3,
        execute,
        lambda: PostgresCaptionRepository(url),
        rows,
        lambda sql: execute(sql, ()),
        another,
    )


def fill(old: OldDatabase) -> None:
    """What a captioner at that version stored: an image, claims, a key with a session."""
    later = time_text(datetime.now(timezone.utc) + timedelta(hours=1))
    if old.version >= 1:
        old.execute(
            """INSERT INTO images (sha256, path, description, model, prompt, created_at,
                                   width, height, content_type, original_name)
               VALUES (%s, 'uploads/b.png', 'an old lighthouse', 'm', '', %s,
                       10, 20, 'image/png', 'b.png')""",
            (OLD, WHEN),
        )
    if old.version >= old.claims_from:
        lease = "%s" if old.engine == "sqlite" else "to_timestamp(%s)"
        for key, expires in ((LIVE, 3600.0), (STALE, -3600.0)):
            old.execute(
                f"""INSERT INTO caption_claims (sha256, model, prompt, owner, expires_at)
                    VALUES (%s, %s, %s, 'old-host/1/abc', {lease})""",
                (key.sha256, key.model, key.prompt, datetime.now().timestamp() + expires),
            )
    if old.version >= old.keys_from:
        old.execute(
            """INSERT INTO api_keys (name, scope, key_sha256, created_at)
               VALUES ('old', 'admin', %s, %s)""",
            ("e" * 64, WHEN),
        )
        old.execute(
            "INSERT INTO api_sessions (token_sha256, key_name, expires_at) VALUES (%s, 'old', %s)",
            ("f" * 64, later),
        )


def time_text(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


SQLITE_VERSIONS = range(len(SHIPPED["sqlite"]) + 1)
POSTGRES_VERSIONS = range(len(SHIPPED["postgres"]) + 1)


@pytest.fixture(
    params=[("sqlite", v) for v in SQLITE_VERSIONS] + [("postgres", v) for v in POSTGRES_VERSIONS],
    ids=lambda param: f"{param[0]}-v{param[1]}",
)
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> OldDatabase:
    engine, version = request.param
    if engine == "sqlite":
        old = sqlite_at(version, tmp_path)
    else:
        old = postgres_at(version, request.getfixturevalue("postgres_server"))
    fill(old)
    return old


@pytest.fixture
def upgraded(old_database: OldDatabase) -> Iterator[SqlCatalogue]:
    catalogue = old_database.open()
    yield catalogue
    catalogue.close()


def test_an_old_database_is_brought_to_the_current_version(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    latest = len(schema_steps(old_database.engine))

    assert upgraded.schema_version == latest
    applied = old_database.rows("SELECT version FROM schema_migrations ORDER BY version")
    assert [version for (version,) in applied] == list(range(1, latest + 1))
    if old_database.engine == "sqlite":  # kept up, so earlier captioners can tell
        assert old_database.rows("SELECT version FROM schema_version") == [(latest,)]
    assert schema_of(old_database) == schema_of(old_database.opened_fresh())


def test_old_records_read_list_and_search_as_before(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    if old_database.version == 0:
        assert list(upgraded.list(10)) == []
        return
    record = upgraded.find(OLD, "m", "")

    assert record is not None
    assert (record.description, record.path, record.original_name) == (
        "an old lighthouse",
        "uploads/b.png",
        "b.png",
    )
    assert record.created_at == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert record.provenance == Provenance()  # from before provenance: unknown
    assert record.duration_ms is None
    assert upgraded.get(record.id) == record
    assert [entry.record for entry in upgraded.list(10)] == [record]
    assert [entry.record for entry in upgraded.list(10, query="lightho")] == [record]
    assert upgraded.captions_of(OLD) == [record]
    assert upgraded.without_caption("other", "") == [record]


def test_old_claims_hold_and_stale_ones_are_taken_over(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    held_before = old_database.version >= old_database.claims_from

    assert (upgraded.claim(LIVE, 30.0) is None) == held_before
    taken = upgraded.claim(STALE, 30.0)
    assert taken is not None
    assert upgraded.renew(taken, 30.0)
    stored, created = upgraded.complete(taken, new("d", "a stale key captioned anew"))
    assert created
    assert upgraded.await_record(STALE, 1.0) == stored


def test_old_keys_and_sessions_still_let_their_holders_in(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    now = datetime.now(timezone.utc)
    if old_database.version >= old_database.keys_from:
        found = upgraded.key_with_hash("e" * 64)
        assert found is not None
        assert (found[0].name, found[0].scope) == ("old", Scope.ADMIN)
        session = upgraded.key_of_session("f" * 64, now)
        assert session is not None
        assert session[0].name == "old"
    else:
        assert not upgraded.has_keys()

    upgraded.add_key(ApiKey("new", Scope.READ, now), "1" * 64)
    upgraded.add_session("2" * 64, "new", now + timedelta(hours=1))
    session = upgraded.key_of_session("2" * 64, now)
    assert session is not None
    assert session[0].name == "new"


def test_new_records_with_provenance_land_beside_the_old_ones(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    provenance = Provenance.of("sha256:abc", {"max_new_tokens": 20})
    from dataclasses import replace

    added, created = upgraded.add(replace(new("a", "a new cat"), provenance=provenance))

    assert created
    assert upgraded.get(added.id) == added
    assert added.provenance == provenance
    assert [entry.record for entry in upgraded.list(1)] == [added]
    assert [entry.record for entry in upgraded.list(10, query="cat")] == [added]


def test_a_second_opening_finds_nothing_left_to_do(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    before = old_database.rows("SELECT version FROM schema_migrations ORDER BY version")
    again = old_database.open()
    again.close()

    assert old_database.rows("SELECT version FROM schema_migrations ORDER BY version") == before


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_recaptions_stored_before_image_ids_list_each_image_once(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    before = next(s.version - 1 for s in schema_steps(engine) if "image_id" in s.script)
    if engine == "sqlite":
        old = sqlite_at(before, tmp_path)
    else:
        old = postgres_at(before, request.getfixturevalue("postgres_server"))
    for sha, model in (("a", "old"), ("b", "old"), ("a", "m"), ("b", "m")):
        old.execute(
            """INSERT INTO images (sha256, path, description, model, prompt, created_at,
                                   width, height, content_type)
               VALUES (%s, 'p', 'a cat', %s, '', %s, 1, 1, 'image/png')""",
            (sha * 64, model, WHEN),
        )
    shown = CaptionChoice(model="m", prompt="")

    catalogue = old.open()
    try:
        listed = catalogue.list(10, shown=shown)
        catalogue.delete(1)  # the first record of image a alone (a repair does that)
        after = catalogue.list(10, shown=shown)
    finally:
        catalogue.close()

    assert [(e.image_id, e.record.id, e.captions) for e in listed] == [(2, 4, 2), (1, 3, 2)]
    assert [(e.image_id, e.record.id) for e in after] == [(3, 3), (2, 4)]


# --- the schema files themselves --------------------------------------------------------------


BOOKKEEPING = ("schema_migrations", "schema_version")


def schema_of(database: OldDatabase) -> list[tuple[Any, ...]]:
    """Every table, column, index, trigger and constraint, as the engine describes them."""
    if database.engine == "sqlite":
        return [
            (kind, name, normalised(sql))
            for kind, name, sql in database.rows(
                "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
            )
            if name not in BOOKKEEPING
        ]
    described = database.rows(
        """SELECT table_name, column_name, ordinal_position::text, data_type,
                  column_default, is_nullable, generation_expression
           FROM information_schema.columns WHERE table_schema = 'public'
           UNION ALL
           SELECT tablename, indexname, '', indexdef, NULL, NULL, NULL
           FROM pg_indexes WHERE schemaname = 'public'
           UNION ALL
           SELECT conrelid::regclass::text, conname, '', pg_get_constraintdef(oid), NULL, NULL, NULL
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace
           ORDER BY 1, 2, 3, 4"""
    )
    return [row for row in described if row[0] not in BOOKKEEPING]


def by_hand(database: OldDatabase, files: int) -> OldDatabase:
    """The first ``files`` schema files run as a person would (sqlite3 / psql), no runner."""
    for step in schema_steps(database.engine)[:files]:
        database.script(step.script)
    return database


@pytest.fixture(params=["sqlite", "postgres"])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> OldDatabase:
    if request.param == "sqlite":
        return sqlite_at(0, tmp_path)
    return postgres_at(0, request.getfixturevalue("postgres_server"))


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_the_steps_shipped_before_the_schema_files_are_its_first_files_unchanged(
    engine: str,
) -> None:
    assert len(shipped_steps(engine)) == len(SHIPPED[engine])


def test_the_runner_applies_exactly_the_schema_files(empty: OldDatabase) -> None:
    files = len(schema_steps(empty.engine))

    assert schema_of(empty.opened_fresh()) == schema_of(by_hand(empty, files))


def test_the_record_columns_are_the_images_table(empty: OldDatabase) -> None:
    fresh = empty.opened_fresh()
    if fresh.engine == "sqlite":
        columns = [row[1] for row in fresh.rows("PRAGMA table_info(images)")]
    else:
        columns = [
            name
            for (name,) in fresh.rows(
                """SELECT column_name FROM information_schema.columns
                   WHERE table_name = 'images' AND generation_expression IS NULL
                   ORDER BY ordinal_position"""
            )
        ]

    # and image_id, which triggers keep (listings walk first records by it), and the queue's
    # order: priority and next_attempt_at
    assert [c for c in columns if c not in INTERNAL_COLUMNS] == list(RECORD_COLUMNS)
    assert set(columns) - set(RECORD_COLUMNS) == INTERNAL_COLUMNS


def test_old_records_are_captioned_and_the_queue_works_once_upgraded(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    if old_database.version >= 1:
        old = upgraded.find(OLD, "m", "")
        assert old is not None
        assert (old.status, old.failure, old.attempts) == ("captioned", None, 0)

    queued, created = upgraded.enqueue(new("9", description=""))
    taken = upgraded.take("m", 30, 10)

    assert created
    assert queued.status == "pending"
    assert [item.record.id for item in taken] == [queued.id]
    assert upgraded.queue_status(alive_s=5).counts["pending"] == 1


def test_wrong_keys_are_counted_in_the_catalogue_once_upgraded(
    old_database: OldDatabase, upgraded: SqlCatalogue
) -> None:
    throttle = Throttle(upgraded, "wrong_keys", Rate(2, 60.0))

    assert [throttle.hit("10.0.0.1"), throttle.hit("10.0.0.1")] == [None, None]
    assert throttle.hit("10.0.0.1") is not None
