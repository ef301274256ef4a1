"""PostgresCaptionRepository on a real PostgreSQL 15: what only it has (rest: contract suite)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from captioner.adapters.catalogue.migrations import schema_steps
from captioner.adapters.catalogue.postgres import PostgresCaptionRepository
from captioner.adapters.catalogue.search import tsquery
from captioner.domain.errors import CatalogueUnavailable
from tests.support.live_server import free_port
from tests.support.records import new_record as new

CAPTIONER = str(Path(sys.executable).with_name("captioner"))


def test_replicas_starting_together_apply_each_migration_once(postgres_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        repositories = list(pool.map(lambda _: PostgresCaptionRepository(postgres_url), range(4)))

    with psycopg.connect(postgres_url) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == list(range(1, len(schema_steps("postgres")) + 1))
    assert all(r.schema_version == len(schema_steps("postgres")) for r in repositories)
    for repository in repositories:
        repository.close()


def test_connections_the_server_dropped_are_replaced_without_an_error(postgres_url: str) -> None:
    repository = PostgresCaptionRepository(postgres_url)
    record, _ = repository.add(new("a"))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    assert repository.get(record.id) == record
    assert repository.readiness().ready
    repository.close()


def test_an_unreachable_database_is_a_prompt_transient_fault_naming_the_cause() -> None:
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/nowhere"
    started = time.monotonic()

    with pytest.raises(CatalogueUnavailable, match="database unreachable") as raised:
        PostgresCaptionRepository(url, connect_timeout_s=1)

    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{port} (Connection refused)" in str(raised.value)
    assert raised.value.retry_after_s is not None


def test_prefix_query_quotes_every_word() -> None:
    assert tsquery("Cat's  DOG:*") == "'cat':* & 's':* & 'dog':*"
    assert tsquery(" !&| ") is None


def test_db_upgrade_migrates_and_reports_the_schema_version(
    postgres_url: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [CAPTIONER, "db", "upgrade", "--data-dir", str(tmp_path)],
        # PYTHONPATH kept: the sources under test, where they are not the installed ones.
        env={
            "CAPTIONER_DATABASE_URL": postgres_url,
            "PATH": "/usr/bin:/bin",
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert f"schema version {len(schema_steps('postgres'))}" in result.stdout
    assert not (tmp_path / "captioner.sqlite3").exists()


def test_a_deletes_mark_of_some_bytes_waits_for_an_insert_of_their_record_in_progress(
    postgres_url: str,
) -> None:
    uploading, deleting = (PostgresCaptionRepository(postgres_url) for _ in range(2))
    record = new("a", "a cat")
    with ThreadPoolExecutor(1) as pool:
        with uploading._writing() as db:  # the insert's transaction, not yet committed
            uploading._insert(db, record)
            mark = pool.submit(deleting.begin_delete, record.sha256)
            time.sleep(0.3)
            waited = not mark.done()
        mark.result(timeout=10)
        # Marked after the record committed: the delete's count, after its mark, sees it.
        counted = deleting.count_with_path(record.path)
        with uploading._writing() as db:
            uploading._insert(db, new("c", "a dog"))
            unrelated = pool.submit(deleting.begin_delete, "b" * 64)  # other bytes never wait
            unrelated.result(timeout=10)

    assert waited
    assert counted == 1
    uploading.close()
    deleting.close()


def test_claims_commit_without_waiting_for_the_flush_and_records_still_wait(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease is no data: its commit skips the WAL flush (the record's commit flushes it);
    another replica sees it at once, and the record's own commit stays durable."""
    from captioner.domain.model import CaptionKey

    here, elsewhere = (PostgresCaptionRepository(postgres_url) for _ in range(2))
    committed_with: list[str] = []
    transaction = here._transaction

    @contextlib.contextmanager
    def watched() -> Iterator[psycopg.Connection[TupleRow]]:
        with transaction() as db:
            yield db
            setting = db.execute("SHOW synchronous_commit").fetchone()
            assert setting is not None
            committed_with.append(setting[0])

    monkeypatch.setattr(here, "_transaction", watched)
    key = CaptionKey("c" * 64, "m", "")

    claim = here.claim(key, 30.0)
    assert claim is not None
    assert elsewhere.claim(key, 30.0) is None
    here.complete(claim, new("c"))

    assert committed_with == ["off", "on"]
    assert elsewhere.find("c" * 64, "m", "") is not None
