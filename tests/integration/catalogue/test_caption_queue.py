"""The caption queue on both catalogues (SQLite, PostgreSQL): pending records taken in batches
under leased claims, captions written and claims released together, retries, heartbeats."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from captioner.adapters.catalogue.sql import SqlCatalogue
from captioner.domain.model import (
    CAPTIONED,
    FAILED,
    PENDING,
    CaptionDone,
    CaptionKey,
    NewImageRecord,
    Provenance,
)
from tests.support.records import new_record


def pending(sha: str) -> NewImageRecord:
    return new_record(sha, description="")


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlCatalogue]:
    catalogue: Any
    if request.param == "sqlite":
        from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository

        catalogue = SqliteCaptionRepository(tmp_path / "db.sqlite3", claim_poll_s=0.02)
    else:
        from captioner.adapters.catalogue.postgres import PostgresCaptionRepository

        catalogue = PostgresCaptionRepository(
            request.getfixturevalue("postgres_url"), claim_poll_s=0.05
        )
    yield catalogue
    catalogue.close()


def done(item: Any, text: str) -> CaptionDone:
    return CaptionDone(item.claim, item.record.id, text, Provenance.of("rev", {"n": 1}), 12.5)


def test_a_queued_record_is_pending_listed_and_not_known(queue: SqlCatalogue) -> None:
    record, created = queue.enqueue(pending("a"))

    assert created
    assert record.status == PENDING
    assert record.description == ""
    assert queue.find_many([record.sha256], "m", "") == []
    assert [entry.record.status for entry in queue.list(10)] == [PENDING]
    assert queue.enqueue(pending("a")) == (record, False)


def test_a_batch_is_taken_once_captioned_in_one_step_and_released(queue: SqlCatalogue) -> None:
    ids = [queue.enqueue(pending(sha))[0].id for sha in "abc"]

    first = queue.take("m", lease_s=30, limit=2)
    second = queue.take("m", lease_s=30, limit=2)
    kept = queue.finish([done(item, f"caption {item.record.id}") for item in first])

    assert [item.record.id for item in first] == ids[:2]
    assert [item.record.id for item in second] == ids[2:]
    assert [(r.status, r.description, r.duration_ms) for r in kept] == [
        (CAPTIONED, f"caption {ids[0]}", 12.5),
        (CAPTIONED, f"caption {ids[1]}", 12.5),
    ]
    assert kept[0].provenance.model_revision == "rev"
    assert queue.claim(CaptionKey("a" * 64, "m", ""), 30) is not None  # released
    assert [e.record.id for e in queue.list(10, query="caption")] == ids[1::-1]  # searchable
    assert queue.take("m", 30, 10) == []


def test_urgent_records_go_before_older_asynchronous_ones(queue: SqlCatalogue) -> None:
    older = queue.enqueue(pending("a"))[0]
    urgent = queue.enqueue(pending("b"), urgent=True)[0]
    bumped = queue.enqueue(pending("a"), urgent=True)[0]  # a caller now waits for it

    taken = queue.take("m", 30, 10)

    assert bumped.id == older.id
    assert [item.record.id for item in taken] == sorted([older.id, urgent.id])
    assert queue.take("other-model", 30, 10) == []


def test_a_lapsed_lease_lets_another_worker_take_the_batch(queue: SqlCatalogue) -> None:
    queue.enqueue(pending("a"))
    lost = queue.take("m", lease_s=0.3, limit=5)

    assert queue.take("m", 30, 5) == []
    time.sleep(0.4)
    taken = queue.take("m", 30, 5)

    assert [item.record.id for item in taken] == [lost[0].record.id]


def test_model_errors_back_off_then_fail_with_the_reason(queue: SqlCatalogue) -> None:
    queue.enqueue(pending("a"))
    first = queue.fail(queue.take("m", 30, 1)[0], "boom 1", max_attempts=2, retry_in_s=0.2)
    assert first is not None
    assert (first.status, first.attempts) == (PENDING, 1)
    assert queue.take("m", 30, 1) == []  # backing off
    time.sleep(0.3)
    record = queue.fail(queue.take("m", 30, 1)[0], "boom 2", max_attempts=2, retry_in_s=0.2)

    assert record is not None
    assert record.attempts == 2
    assert record.status == FAILED
    assert record.failure == "boom 2"
    assert queue.take("m", 30, 1) == []
    assert [r.id for r in queue.jobs(FAILED)] == [record.id]
    assert queue.retry() == 1
    again = queue.take("m", 30, 1)[0].record
    assert (again.status, again.attempts, again.failure) == (PENDING, 0, None)


def test_a_sync_caption_of_a_queued_key_completes_its_record(queue: SqlCatalogue) -> None:
    queued = queue.enqueue(pending("a"))[0]
    claim = queue.claim(CaptionKey("a" * 64, "m", ""), 30)
    assert claim is not None

    record, created = queue.complete(claim, new_record("a", description="now captioned"))

    assert created
    assert record.id == queued.id
    assert record.status == CAPTIONED
    assert queue.take("m", 30, 1) == []


def test_await_settled_returns_when_a_worker_captions_it(queue: SqlCatalogue) -> None:
    queue.enqueue(pending("a"))
    key = CaptionKey("a" * 64, "m", "")
    assert queue.await_settled(key, 0.1) is not None  # still pending at the timeout
    queue.finish([done(item, "late") for item in queue.take("m", 30, 1)])

    settled = queue.await_settled(key, 5)

    assert settled is not None
    assert settled.description == "late"


def test_the_status_counts_ages_and_live_workers(queue: SqlCatalogue) -> None:
    queue.enqueue(pending("a"))
    queue.add(new_record("b"))
    queue.heartbeat("w1", "m")

    status = queue.queue_status(alive_s=5)
    queue.forget_worker("w1")

    assert dict(status.counts) == {CAPTIONED: 1, PENDING: 1, FAILED: 0}
    assert status.oldest_pending_age_s is not None
    assert 0 <= status.oldest_pending_age_s < 60
    assert [(w.name, w.model) for w in status.workers] == [("w1", "m")]
    assert queue.queue_status(alive_s=5).workers == ()
