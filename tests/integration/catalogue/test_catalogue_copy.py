"""`db copy` between real SQLite and PostgreSQL catalogues: everything kept, killed and resumed,
copied back, and another library's database refused."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from captioner.adapters.catalogue.postgres import PostgresCaptionRepository
from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.domain.access import ApiKey, Scope
from captioner.domain.catalogue_copy import copy_catalogue, table_sum
from captioner.domain.errors import CopyRefused
from captioner.domain.model import PERSON_MODEL, Provenance
from tests.support.records import new_record

CAPTIONER = str(Path(sys.executable).with_name("captioner"))


def a_library(database: Path, images: int = 30) -> SqliteCaptionRepository:
    """Records with provenance, person edits, a pending and a failed caption, keys, sessions."""
    catalogue = SqliteCaptionRepository(database)
    for n in range(images):
        catalogue.add(
            dataclasses.replace(
                new_record(f"{n:064x}", description=f"a photo numbered {n}"),
                provenance=Provenance.of("rev-1", {"num_beams": 3, "max_new_tokens": 30}),
                duration_ms=12.5 + n,
            )
        )
    catalogue.add(new_record(f"{0:064x}", "a person's words", model=PERSON_MODEL))
    catalogue.delete(2)  # a gap in the ids, as deletes leave
    pending, _ = catalogue.enqueue(new_record("e", model="queued"))
    failed, _ = catalogue.enqueue(new_record("f", model="queued"))
    taken = catalogue.take("queued", 30, 10)
    catalogue.fail(next(t for t in taken if t.record.id == failed.id), "out of memory", 1, 60)
    catalogue.release([t.claim for t in taken if t.record.id == pending.id])
    now = datetime.now(timezone.utc)
    catalogue.add_key(ApiKey("admin", Scope.ADMIN, now, None), "a" * 64)
    catalogue.add_key(ApiKey("gallery", Scope.READ, now, now), "b" * 64)
    catalogue.add_session("c" * 64, "gallery", now + timedelta(days=1))
    return catalogue


def test_a_copy_to_postgresql_and_back_keeps_every_record_key_and_id(
    tmp_path: Path, postgres_url: str
) -> None:
    source = a_library(tmp_path / "a.sqlite3")
    middle = PostgresCaptionRepository(postgres_url)
    back = SqliteCaptionRepository(tmp_path / "b.sqlite3")

    there = copy_catalogue(source, middle, batch=7)
    home = copy_catalogue(middle, back, batch=7)

    assert there.matches
    assert home.matches
    assert [t.source for t in there.tables] == [t.target for t in home.tables]
    for copy in (middle, back):
        assert list(copy.all_records()) == list(source.all_records())
        assert copy.all_keys() == source.all_keys()
        assert copy.key_of_session("c" * 64, datetime.now(timezone.utc)) is not None
        assert [r.status for r in copy.jobs()] == [r.status for r in source.jobs()]
    added, _ = middle.add(new_record("9"))  # PostgreSQL's counter went past the copied ids
    assert added.id == max(r.id for r in source.all_records()) + 1
    assert middle.list(100, query="numbered") == source.list(100, query="numbered")
    for catalogue in (source, middle, back):
        catalogue.close()


def test_a_killed_copy_run_again_completes_with_matching_sums(
    tmp_path: Path, postgres_url: str
) -> None:
    data = tmp_path / "data"
    a_library(data / "captioner.sqlite3").close()
    total = _grown(data / "captioner.sqlite3", 3000)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")},
        "CAPTIONER_DATA_DIR": str(data),
    }
    command = [CAPTIONER, "db", "copy", "--to", postgres_url, "--batch", "20"]
    killed = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    copied_before_kill = 0
    deadline = time.monotonic() + 120
    while copied_before_kill < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
        copied_before_kill = _count(postgres_url)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    after_kill = _count(postgres_url)

    started = time.monotonic()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    print(f"rerun: {time.monotonic() - started:.1f} s\n{rerun.stdout}{rerun.stderr}")

    assert 0 < after_kill < total, "the copy was not stopped part way"
    assert rerun.returncode == 0, rerun.stderr
    images = next(line for line in rerun.stdout.splitlines() if line.startswith("images\t"))
    _, rows, inserted, updated, deleted, unchanged, _, verified = images.split("\t")
    assert (int(rows), int(unchanged), verified) == (total, after_kill, "yes")
    assert int(inserted) == total - after_kill
    assert (updated, deleted) == ("0", "0")
    source = SqliteCaptionRepository(data / "captioner.sqlite3")
    target = PostgresCaptionRepository(postgres_url)
    for table in source.tables():
        assert table_sum(source, table) == table_sum(target, table)
    source.close()
    target.close()


def _grown(database: Path, more: int) -> int:
    """Add ``more`` records in one statement (thousands of commits would take seconds)."""
    with sqlite3.connect(database) as db:
        db.execute(
            """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
               INSERT INTO images (sha256, path, description, model, prompt, created_at,
                                   width, height, content_type)
               SELECT printf('%064x', 900000 + i), 'uploads/x.png', 'bulk ' || i, 'm', '',
                      strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'), 10, 20, 'image/png'
               FROM n""",
            (more,),
        )
        return int(db.execute("SELECT count(*) FROM images").fetchone()[0])


def _count(url: str) -> int:
    try:
        with psycopg.connect(url) as db:
            row = db.execute("SELECT count(*) FROM images").fetchone()
    except psycopg.errors.UndefinedTable:  # not migrated yet
        return 0
    assert row is not None
    return int(row[0])


def test_a_database_holding_another_library_is_refused_and_left_as_it_was(
    tmp_path: Path, postgres_url: str
) -> None:
    data = tmp_path / "data"
    a_library(data / "captioner.sqlite3").close()
    other = PostgresCaptionRepository(postgres_url)
    for n in range(5):
        other.add(new_record(f"{n + 100:064x}", "someone else's photo"))
    before = list(other.all_records())

    refused = subprocess.run(
        [CAPTIONER, "db", "copy", "--to", postgres_url],
        env={**os.environ, "CAPTIONER_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert refused.returncode == 1
    assert "captioner: the target holds other data at images id 1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert list(other.all_records()) == before
    assert other.all_keys() == []
    other.close()


@pytest.mark.parametrize("to", ["dir", "file_url"])
def test_a_copy_back_into_a_data_dir_makes_its_sqlite_file(
    tmp_path: Path, postgres_url: str, to: str
) -> None:
    data = tmp_path / "data"
    a_library(data / "captioner.sqlite3").close()
    env = {**os.environ, "CAPTIONER_DATA_DIR": str(data)}
    there = subprocess.run(
        [CAPTIONER, "db", "copy", "--to", postgres_url], env=env, capture_output=True, text=True
    )
    home = tmp_path / "home"
    target = str(home) if to == "dir" else f"file://{home}"
    back = subprocess.run(
        [CAPTIONER, "db", "copy", "--to", target],
        env={**env, "CAPTIONER_DATABASE_URL": postgres_url},
        capture_output=True,
        text=True,
    )

    assert there.returncode == 0, there.stderr
    assert back.returncode == 0, back.stderr
    assert "\tNO" not in there.stdout + back.stdout
    source = SqliteCaptionRepository(data / "captioner.sqlite3")
    copy = SqliteCaptionRepository(home / "captioner.sqlite3")
    assert list(copy.all_records()) == list(source.all_records())
    source.close()
    copy.close()


def test_a_copy_taken_while_the_source_is_written_is_completed_by_a_second_run(
    tmp_path: Path, postgres_url: str
) -> None:
    source = a_library(tmp_path / "a.sqlite3", images=300)
    target = PostgresCaptionRepository(postgres_url)
    stop = threading.Event()
    written = []

    def uploads_and_deletes() -> None:
        n = 0
        while not stop.is_set() or n < 5:
            source.add(new_record(f"{n + 50_000:064x}", "uploaded during the copy"))
            if n % 10 == 0:
                source.delete(10 + n)  # a record the copy may have taken already
            n += 1
            written.append(n)

    writer = threading.Thread(target=uploads_and_deletes)
    writer.start()
    try:
        under_load = copy_catalogue(source, target, batch=50)
    finally:
        stop.set()
        writer.join()
    second = copy_catalogue(source, target, batch=50, prune=True)

    assert second.matches
    assert list(target.all_records()) == list(source.all_records())
    assert sum(t.inserted for t in under_load.tables) > 0
    assert written, "nothing was written during the copy"
    source.close()
    target.close()


def test_a_target_written_to_during_the_copy_is_refused_with_a_clear_error(
    tmp_path: Path, postgres_url: str
) -> None:
    source = a_library(tmp_path / "a.sqlite3")
    target = PostgresCaptionRepository(postgres_url)
    later = source.get(20)
    assert later is not None

    def a_replica_uploads_the_same_bytes(table: str, rows: int) -> None:
        if table == "images" and target.find(later.sha256, later.model, later.prompt) is None:
            with psycopg.connect(postgres_url, autocommit=True) as db:  # ids far from the copy's
                db.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), 1000)")
            target.add(new_record(later.sha256, model=later.model, prompt=later.prompt))

    with pytest.raises(CopyRefused, match="already holds a row with the same unique values"):
        copy_catalogue(source, target, batch=10, on_rows=a_replica_uploads_the_same_bytes)
    source.close()
    target.close()


def test_only_the_library_is_copied_not_claims_heartbeats_wrong_key_counts_or_deletes(
    tmp_path: Path, postgres_url: str
) -> None:
    sqlite_side = SqliteCaptionRepository(tmp_path / "captioner.sqlite3")
    postgres_side = PostgresCaptionRepository(postgres_url)
    for side in (sqlite_side, postgres_side):
        side.begin_delete("a" * 64)  # a delete in flight: its replica's business, not the copy's

    copied = [{table.name for table in side.tables()} for side in (sqlite_side, postgres_side)]
    target = SqliteCaptionRepository(tmp_path / "copy.sqlite3")
    copy_catalogue(postgres_side, target)

    sqlite_side.close()
    postgres_side.close()
    assert copied == [{"images", "api_keys", "api_sessions"}] * 2
    assert target.deletes_of("a" * 64).running == 0
    target.close()
