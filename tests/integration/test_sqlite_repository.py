"""SqliteCaptionRepository on a real database file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from captioner.adapters.sqlite import (
    MAX_IMAGE_ID,
    MIGRATIONS,
    SqliteCaptionRepository,
    fts_query,
)
from captioner.domain.model import NewImageRecord


def new(
    sha: str, description: str = "a cat on a mat", model: str = "m", prompt: str = ""
) -> NewImageRecord:
    return NewImageRecord(
        sha256=sha * 64 if len(sha) == 1 else sha,
        path=f"uploads/{sha}.png",
        description=description,
        model=model,
        prompt=prompt,
        width=10,
        height=20,
        content_type="image/png",
        original_name="photo.png",
    )


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
    assert reopened.schema_version == len(MIGRATIONS)


def test_unique_key_returns_the_existing_row_instead_of_a_second(
    repository: SqliteCaptionRepository,
) -> None:
    one, created_one = repository.add(new("a", "first"))
    two, created_two = repository.add(new("a", "second"))
    other_model, created_three = repository.add(new("a", "third", model="other"))

    assert (created_one, created_two, created_three) == (True, False, True)
    assert two == one
    assert other_model.id != one.id


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


def test_listing_is_newest_first_and_pages_by_id(repository: SqliteCaptionRepository) -> None:
    ids = [repository.add(new(c))[0].id for c in "abcde"]

    assert [r.id for r in repository.list(2)] == ids[::-1][:2]
    assert [r.id for r in repository.list(10, before=ids[2])] == ids[:2][::-1]


def test_search_ranks_by_words_in_descriptions(repository: SqliteCaptionRepository) -> None:
    repository.add(new("a", "a dog running on the beach"))
    cat, _ = repository.add(new("b", "a cat sleeping on a cat bed"))
    repository.add(new("c", "a red car"))

    found = repository.list(10, query="cat")
    assert [r.id for r in found] == [cat.id]
    assert [r.description for r in repository.list(10, query="DOG beach")] == [
        "a dog running on the beach"
    ]
    assert repository.list(10, query="giraffe") == []


@pytest.mark.parametrize(
    "query", ['"', "*", 'cat"', "NEAR(", "a OR", "-", "^", "cat AND", "''", "(((", "\x00", "🐱"]
)
def test_search_with_fts_syntax_characters_never_fails(
    repository: SqliteCaptionRepository, query: str
) -> None:
    repository.add(new("a", "a cat"))
    repository.list(10, query=query)  # must not raise


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('cat" OR dog') == '"cat"* "OR"* "dog"*'
    assert fts_query("  ") is None


def test_delete_returns_the_row_and_updates_the_search_index(
    repository: SqliteCaptionRepository,
) -> None:
    record, _ = repository.add(new("a", "a unique zebra"))
    assert repository.delete(record.id) == record
    assert repository.delete(record.id) is None
    assert repository.list(10, query="zebra") == []


def test_many_threads_write_without_database_is_locked(
    repository: SqliteCaptionRepository,
) -> None:
    errors: list[Exception] = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                repository.add(new(f"{n:032x}{i:032x}"))
                repository.list(5)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(list(repository.all_records())) == 160


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


def test_walking_all_records_pages_through_a_big_catalogue(
    repository: SqliteCaptionRepository,
) -> None:
    for n in range(2500):
        repository.add(new(f"{n:064x}"))
    ids = [record.id for record in repository.all_records()]
    assert ids == sorted(ids)
    assert len(ids) == 2500


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
        # (naming description too moves its search entry along, by the update trigger)
        db.execute(
            "UPDATE images SET id = ?, description = description WHERE id = ?",
            (MAX_IMAGE_ID, first.id),
        )
    db.close()

    assert repository.get(MAX_IMAGE_ID + 1) is None
    assert [r.id for r in repository.list(10)] == [MAX_IMAGE_ID, second.id]
    assert [r.id for r in repository.list(10, before=2**70)] == [MAX_IMAGE_ID, second.id]
    assert [r.id for r in repository.list(10, before=MAX_IMAGE_ID)] == [second.id]
    assert [r.id for r in repository.list(10, query="cat")] == [MAX_IMAGE_ID, second.id]
