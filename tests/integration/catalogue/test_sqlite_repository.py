"""SqliteCaptionRepository on a real file: what only SQLite has (the rest: contract suite)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from captioner.adapters.catalogue.migrations import schema_steps
from captioner.adapters.catalogue.search import fts5_query
from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.domain.rules import MAX_IMAGE_ID
from tests.support.records import new_record as new


@pytest.fixture
def repository(tmp_path: Path) -> SqliteCaptionRepository:
    return SqliteCaptionRepository(tmp_path / "db.sqlite3")


def test_rows_survive_reopening_the_database(tmp_path: Path) -> None:
    first = SqliteCaptionRepository(tmp_path / "db.sqlite3")
    record, created = first.add(new("a"))
    first.close()

    reopened = SqliteCaptionRepository(tmp_path / "db.sqlite3")
    assert created
    assert reopened.get(record.id) == record
    assert reopened.schema_version == len(schema_steps("sqlite"))


def test_the_database_itself_refuses_a_duplicate_key(repository: SqliteCaptionRepository) -> None:
    import sqlite3

    repository.add(new("a"))
    db = sqlite3.connect(repository._database)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO images (sha256, path, description, model, prompt, created_at, width,"
            " height, content_type) SELECT sha256, path, 'x', model, prompt, created_at, 1, 1,"
            " content_type FROM images"
        )


def test_fts5_query_quotes_every_word() -> None:
    assert fts5_query('cat" OR dog') == '"cat"* "OR"* "dog"*'
    assert fts5_query("  ") is None


def test_threads_that_come_and_go_do_not_pile_up_open_connections(
    repository: SqliteCaptionRepository,
) -> None:
    # A thread-per-request server starts a new thread for every request.
    for n in range(40):
        thread = threading.Thread(target=repository.add, args=(new(f"{n:064x}"),))
        thread.start()
        thread.join()

    assert len(list(repository.all_records())) == 40
    assert repository.open_connections <= 2


def test_readiness_says_not_ready_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "db.sqlite3"
    writable = SqliteCaptionRepository(path)
    assert writable.readiness().ready
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock

    readiness = writable.readiness()

    holder.execute("ROLLBACK")
    assert not readiness.ready
    assert "not writable" in readiness.reason
    assert writable.readiness().ready


def test_ids_and_cursors_beyond_sqlite_integers_name_no_row_and_bound_nothing(
    repository: SqliteCaptionRepository,
) -> None:
    import sqlite3

    first, _ = repository.add(new("a"))
    second, _ = repository.add(new("b"))
    db = sqlite3.connect(repository._database)
    with db:  # the largest id SQLite can hold, past the old "no cursor" sentinel (2**62)
        # (naming description too moves its search entry along, by the update trigger; the
        # record is its image's first, so it names itself as its image)
        db.execute(
            "UPDATE images SET id = ?, image_id = ?, description = description WHERE id = ?",
            (MAX_IMAGE_ID, MAX_IMAGE_ID, first.id),
        )
    db.close()

    assert repository.get(MAX_IMAGE_ID + 1) is None
    assert [r.record.id for r in repository.list(10)] == [MAX_IMAGE_ID, second.id]
    assert [r.record.id for r in repository.list(10, before=2**70)] == [MAX_IMAGE_ID, second.id]
    assert [r.record.id for r in repository.list(10, before=MAX_IMAGE_ID)] == [second.id]
    assert [r.record.id for r in repository.list(10, query="cat")] == [MAX_IMAGE_ID, second.id]


def _open_after(path: str, start: Any, errors: Any) -> None:
    """In a child process: open the catalogue once every sibling is ready to."""
    start.wait()
    try:
        SqliteCaptionRepository(Path(path)).close()
    except Exception as error:  # reported to the parent, which asserts on it
        errors.put(repr(error))


def test_processes_opening_one_new_catalogue_at_once_all_start(tmp_path: Path) -> None:
    import multiprocessing

    # Replicas started together on one data dir: the switch to WAL used to fail with
    # "database is locked" in 6 of 20 such rounds.
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    for round_number in range(5):
        path = str(tmp_path / f"round-{round_number}.sqlite3")
        start = context.Barrier(4)
        processes = [
            context.Process(target=_open_after, args=(path, start, errors)) for _ in range(4)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert errors.empty(), errors.get()


def test_a_claim_is_seen_at_once_by_another_process_on_the_same_file(tmp_path: Path) -> None:
    """Claims commit without an fsync; the WAL still shows them to every other connection."""
    from captioner.domain.model import CaptionKey

    here = SqliteCaptionRepository(tmp_path / "db.sqlite3")
    elsewhere = SqliteCaptionRepository(tmp_path / "db.sqlite3")
    key = CaptionKey("a" * 64, "m", "")

    claim = here.claim(key, 30.0)

    assert claim is not None
    assert elsewhere.claim(key, 30.0) is None
    here.abandon(claim)
    assert elsewhere.claim(key, 30.0) is not None


def test_records_committed_after_claims_are_synced_in_full(
    repository: SqliteCaptionRepository,
) -> None:
    """A lease's commit may skip the fsync; the connection it used syncs the next record's."""
    from captioner.domain.model import CaptionKey

    key = CaptionKey("b" * 64, "m", "")
    claim = repository.claim(key, 30.0)
    assert claim is not None
    assert repository.renew(claim, 30.0)
    repository.complete(claim, new("b"))

    with repository._borrow() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert repository.find("b" * 64, "m", "") is not None
