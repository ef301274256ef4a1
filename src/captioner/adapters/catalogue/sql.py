"""The catalogue's queries both SQL engines share, written once over a Dialect and a few hooks."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from captioner.adapters.catalogue.dialect import Dialect
from captioner.adapters.catalogue.rows import (
    COLUMNS,
    KEY_COLUMNS,
    NEW_COLUMNS,
    RECORD_COLUMNS,
    columns_of,
    key_of,
    new_values,
    record_of,
)
from captioner.adapters.catalogue.search import FullText
from captioner.domain.access import ApiKey
from captioner.domain.errors import KeyNameTaken
from captioner.domain.model import (
    CAPTIONED,
    FAILED,
    PENDING,
    PERSON_MODEL,
    CaptionChoice,
    CaptionDone,
    CaptionKey,
    Claim,
    DeletesSeen,
    ImageRecord,
    ListedImage,
    ModelCaptions,
    NewImageRecord,
    QueuedCaption,
    QueueStatus,
    Readiness,
    WorkerSeen,
)
from captioner.domain.rules import MAX_IMAGE_ID

_PAGE = 1000
# Rows per multi-row statement: well under every engine's limit on parameters.
_ROWS_PER_STATEMENT = 200


class Rows(Protocol):
    """What a driver's cursor gives back after one statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


class Executes(Protocol):
    """A connection as the shared queries use it: sqlite3's and psycopg's alike."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...


class SqlCatalogue(abc.ABC):
    """The CaptionRepository, CaptionClaims and KeyRing ports on SQL, minus what engines differ in.

    An engine supplies its Dialect, connections (``_reading``/``_writing``), its full-text
    search and, where it can, a faster wake-up for waiters than polling.
    """

    dialect: Dialect
    full_text: FullText
    # How a listing walks the images' first records (image_id = id), where engines differ:
    # the table as the walk reads it, and a condition that keeps true first records only.
    firsts: str = "images AS f"
    firsts_guard: str = ""
    # What the driver raises when an insert meets a taken unique key.
    duplicate_key: tuple[type[BaseException], ...] = ()
    claim_poll_s: float = 0.05
    # Appended to the query that takes a batch from the queue: where the engine can, rows
    # another worker is taking are skipped rather than waited for.
    take_lock: str = ""
    # Added to an insert's RETURNING where the write transaction does not already keep a
    # delete's mark of the same bytes waiting until it commits (see _lock_bytes_deletes).
    holding_deletes: str = ""
    # Seconds from a time column (in the clock's type) to now, as SQL; {column} is filled in.
    age_of: str = "({clock} - {column})"

    # --- hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    def readiness(self) -> Readiness:
        """Whether the catalogue takes writes now, and why not."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections (at shutdown)."""

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[Executes]:
        """A connection for one read."""

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[Executes]:
        """A connection in one write transaction, committed on leaving."""

    def _leasing(self) -> contextlib.AbstractContextManager[Executes]:
        """A write transaction that touches only claims' leases, committed on leaving.

        A lease is no data: one lost in a crash is a key nobody holds (or holds until the
        lease runs out), which the next claim takes. Where the engine can, such commits skip
        the flush to disk a record's commit waits for (one per new upload, not two).
        """
        return self._writing()

    def _lock_images(self, db: Executes) -> None:
        """Keep other writers off the images table until the transaction ends, where the
        write transaction does not already."""
        return  # SQLite's write transaction already holds the whole database

    def _released(self, db: Executes, key: CaptionKey) -> None:
        """Called in the transaction that gives a claim back (completed or abandoned)."""
        return  # by default waiters poll, so there is no one to wake

    def _released_many(self, db: Executes, keys: Sequence[CaptionKey]) -> None:
        """``_released`` for many keys at once, where the engine can do it in one statement."""
        for key in keys:
            self._released(db, key)

    def _released_seeing_deletes(self, db: Executes, key: CaptionKey) -> DeletesSeen:
        """``_released``, and the marks of deletes of the key's bytes as the transaction sees
        them (an engine may read both in one statement)."""
        self._released(db, key)
        return self._marks(db, key.sha256)

    def _lock_bytes_deletes(self, db: Executes, sha256: str) -> None:
        """Make a delete's mark of these bytes wait for the commit of every insert of their
        records in progress, where the write transaction does not already."""
        return  # SQLite's write transaction already holds the whole database

    def _lock_hits(self, db: Executes, counter: str, who: str) -> None:
        """Keep other writers of ``who``'s hits waiting until the transaction ends, where
        the write transaction does not already."""
        return  # SQLite's write transaction already holds the whole database

    def _wakeups(self, key: CaptionKey) -> int:
        """How often the key was released so far, where the engine can tell (else 0)."""
        return 0

    def _wait(self, key: CaptionKey, seen: int, timeout_s: float) -> None:
        """Sleep until the key was released after ``seen``, or ``timeout_s`` passed."""
        time.sleep(timeout_s)

    # --- the schema -------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The newest schema step applied to the database."""
        return int(self._one("SELECT max(version) FROM schema_migrations")[0])

    # --- records ----------------------------------------------------------------------------

    def find(self, sha256: str, model: str, prompt: str) -> ImageRecord | None:
        row = self._one(self._find_sql, (sha256, model, prompt))
        return self._record(row) if row else None

    def find_many(self, sha256s: Sequence[str], model: str, prompt: str) -> Sequence[ImageRecord]:
        if not sha256s:
            return []
        p = self.dialect.mark
        one_of, digests = self.dialect.one_of("sha256", sha256s)
        rows = self._all(
            f"""SELECT {COLUMNS} FROM images
                WHERE model = {p} AND prompt = {p} AND {one_of} AND status = '{CAPTIONED}'""",
            (model, prompt, *digests),
        )
        return [self._record(row) for row in rows]

    def captions_of(self, sha256: str) -> Sequence[ImageRecord]:
        p = self.dialect.mark
        rows = self._all(f"SELECT {COLUMNS} FROM images WHERE sha256 = {p} ORDER BY id", (sha256,))
        return [self._record(row) for row in rows]

    def without_caption(
        self, model: str, prompt: str, after: int = 0, limit: int = _PAGE
    ) -> Sequence[ImageRecord]:
        p = self.dialect.mark
        rows = self._all(
            f"""SELECT {columns_of("i")} FROM images AS i WHERE i.id > {p} AND {self._first_without}
                ORDER BY i.id LIMIT {p}""",
            (after, model, prompt, limit),
        )
        return [self._record(row) for row in rows]

    def count_without_caption(self, model: str, prompt: str) -> int:
        p = self.dialect.mark
        row = self._one(
            f"SELECT count(*) FROM images AS i WHERE i.id > {p} AND {self._first_without}",
            (0, model, prompt),
        )
        return int(row[0])

    def models_with_revision(self, revision: str) -> Sequence[str]:
        p = self.dialect.mark
        rows = self._all(
            f"SELECT DISTINCT model FROM images WHERE model_revision = {p} ORDER BY model",
            (revision,),
        )
        return [str(row[0]) for row in rows]

    def adopt_records(self, aliases: Sequence[str], model: str, revision: str) -> int:
        if not aliases:
            return 0
        d = self.dialect
        p = d.mark
        alias_i, names_i = d.one_of("i.model", aliases)
        alias_j, names_j = d.one_of("j.model", aliases)
        alias, names = d.one_of("model", aliases)
        with self._writing() as db:  # one transaction, committed on leaving
            # A record of the same key landing between the delete and the update would
            # break uniqueness: other writers wait until the rename commits.
            self._lock_images(db)
            # An alias's record whose key the model (or an older alias) has already goes.
            db.execute(
                f"""DELETE FROM images WHERE id IN (
                        SELECT i.id FROM images AS i
                        WHERE {alias_i} AND i.model_revision = {p}
                          AND EXISTS (
                            SELECT 1 FROM images AS j
                            WHERE j.sha256 = i.sha256 AND j.prompt = i.prompt AND (
                                j.model = {p} OR ({alias_j} AND j.model_revision = {p}
                                                  AND j.id < i.id))))""",
                (*names_i, revision, model, *names_j, revision),
            )
            renamed = db.execute(
                f"UPDATE images SET model = {p} WHERE {alias} AND model_revision = {p}",
                (model, *names, revision),
            ).rowcount
        return int(renamed)

    def add(self, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        with self._writing() as db:
            return self._insert(db, new)

    def add_seeing_deletes(self, new: NewImageRecord) -> tuple[ImageRecord, bool, DeletesSeen]:
        with self._writing() as db:
            record, created = self._insert(db, new)
            # A statement after the insert, whose statement held deletes off (_insert_sql).
            marks = self._marks(db, new.sha256)
        return record, created, marks if created else DeletesSeen.unknown()

    def replace(self, new: NewImageRecord) -> ImageRecord | None:
        d = self.dialect
        p = d.mark
        key = (new.sha256, new.model, new.prompt)
        with self._writing() as db:
            # A delete of the image committing between the look below and the insert would
            # leave this row without its file: deletes wait until the edit commits (edits are
            # rare and short, so uploads waiting behind one lose a few milliseconds).
            self._lock_images(db)
            for _ in range(2):  # an insert that lost a race updates the winner's row instead
                row = db.execute(
                    f"""UPDATE images SET description = {p}, model_revision = {p},
                            generation = {p}, duration_ms = {p}, created_at = {d.stamp_now}
                        WHERE sha256 = {p} AND model = {p} AND prompt = {p}
                        RETURNING {COLUMNS}""",
                    (
                        new.description,
                        new.provenance.model_revision,
                        d.encode_json(new.provenance.settings),
                        new.duration_ms,
                        *key,
                    ),
                ).fetchone()
                if row is not None:
                    return self._record(row)
                if (
                    db.execute(f"SELECT 1 FROM images WHERE sha256 = {p}", (new.sha256,)).fetchone()
                    is None
                ):
                    return None  # the image is gone: an edit must not bring back its row
                row = db.execute(self._insert_sql, new_values(new, d)).fetchone()
                if row is not None:
                    return self._record(row)
        return None

    def delete_captions(self, sha256: str, model: str) -> Sequence[ImageRecord]:
        p = self.dialect.mark
        with self._writing() as db:
            # Only beside another model's caption: the image keeps at least one record.
            rows = db.execute(
                f"""DELETE FROM images WHERE sha256 = {p} AND model = {p} AND EXISTS (
                        SELECT 1 FROM images AS o WHERE o.sha256 = {p} AND o.model <> {p})
                    RETURNING {COLUMNS}""",
                (sha256, model, sha256, model),
            ).fetchall()
        return sorted((self._record(row) for row in rows), key=lambda record: record.id)

    def get(self, record_id: int) -> ImageRecord | None:
        if not 1 <= record_id <= MAX_IMAGE_ID:
            return None  # no row can have it
        row = self._one(
            f"SELECT {COLUMNS} FROM images WHERE id = {self.dialect.mark}", (record_id,)
        )
        return self._record(row) if row else None

    def list(
        self,
        limit: int,
        before: int | None = None,
        query: str | None = None,
        shown: CaptionChoice | None = None,
    ) -> Sequence[ListedImage]:
        # "Image ids below `before`" as an inclusive bound a 64-bit integer can take: a cursor
        # past the range of ids bounds nothing.
        last = MAX_IMAGE_ID if before is None else min(before - 1, MAX_IMAGE_ID)
        choice = shown or CaptionChoice(model="", prompt="")
        picks = (choice.only_model, choice.model, choice.model, choice.prompt)
        if query is not None:
            match = self.full_text.query(query)
            if match is None:
                return []
            rows = self._all(self._search_sql, (match, *picks, last, limit))
        else:
            rows = self._all(self._newest_sql, (*picks, last, limit))
        width = len(RECORD_COLUMNS)
        return [
            ListedImage(self._record(row), int(row[width]), int(row[width + 1])) for row in rows
        ]

    def models(self) -> Sequence[ModelCaptions]:
        rows = self._all(
            "SELECT model, count(DISTINCT sha256) FROM images GROUP BY model ORDER BY model"
        )
        return [ModelCaptions(str(model), int(images)) for model, images in rows]

    def delete(self, record_id: int) -> ImageRecord | None:
        if not 1 <= record_id <= MAX_IMAGE_ID:
            return None  # as in get: no row can have it
        row = self._write(
            f"DELETE FROM images WHERE id = {self.dialect.mark} RETURNING {COLUMNS}", (record_id,)
        )
        return self._record(row) if row else None

    def delete_image(self, sha256: str) -> Sequence[ImageRecord]:
        p = self.dialect.mark
        with self._writing() as db:
            rows = db.execute(
                f"DELETE FROM images WHERE sha256 = {p} RETURNING {COLUMNS}", (sha256,)
            ).fetchall()
        return sorted((self._record(row) for row in rows), key=lambda record: record.id)

    def count_with_path(self, path: str) -> int:
        p = self.dialect.mark
        return int(self._one(f"SELECT count(*) FROM images WHERE path = {p}", (path,))[0])

    def all_records(self) -> Iterator[ImageRecord]:
        # Pages by id, so a check of a big catalogue neither holds a connection for the whole
        # walk nor loads every row at once.
        p = self.dialect.mark
        after = 0
        while True:
            rows = self._all(
                f"SELECT {COLUMNS} FROM images WHERE id > {p} ORDER BY id LIMIT {_PAGE}", (after,)
            )
            if not rows:
                return
            for row in rows:
                yield self._record(row)
            after = int(rows[-1][0])

    # --- claims -----------------------------------------------------------------------------

    def claim(self, key: CaptionKey, lease_s: float) -> Claim | None:
        owner = Claim.new_owner()
        with self._leasing() as db:
            row = db.execute(
                self._claim_sql, (key.sha256, key.model, key.prompt, owner, lease_s)
            ).fetchone()
        if row is None:
            return None
        return Claim(key, owner, deletes_seen(row[3], row[4]))

    def renew(self, claim: Claim, lease_s: float) -> bool:
        key, d = claim.key, self.dialect
        p = d.mark
        with self._leasing() as db:
            row = db.execute(
                f"""UPDATE caption_claims SET expires_at = {d.lease_end}
                    WHERE sha256 = {p} AND model = {p} AND prompt = {p} AND owner = {p}
                    RETURNING owner""",
                (lease_s, key.sha256, key.model, key.prompt, claim.owner),
            ).fetchone()
        return row is not None

    def await_record(self, key: CaptionKey, timeout_s: float) -> ImageRecord | None:
        d = self.dialect
        p = d.mark
        # The record and whether the key is still claimed, in one statement (one snapshot): a
        # record landing between two looks cannot be missed.
        sql = f"""SELECT {columns_of("i")},
                         (SELECT c.expires_at > {d.clock} FROM caption_claims AS c
                          WHERE c.sha256 = {p} AND c.model = {p} AND c.prompt = {p})
                  FROM (VALUES (1)) AS one
                  LEFT JOIN images AS i ON i.sha256 = {p} AND i.model = {p} AND i.prompt = {p}
                                       AND i.status = '{CAPTIONED}'"""
        deadline = time.monotonic() + timeout_s
        while True:
            # Read the wake-up count before looking, so a release that lands between the look
            # and the wait still ends the wait.
            seen = self._wakeups(key)
            row = self._one(sql, (key.sha256, key.model, key.prompt) * 2)
            if row[0] is not None:
                return self._record(row)
            if not row[len(RECORD_COLUMNS)]:
                return None  # nobody holds the key (abandoned or expired): claim it
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._wait(key, seen, min(self.claim_poll_s, left))

    def complete(self, claim: Claim, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        record, created, _ = self.complete_seeing_deletes(claim, new)
        return record, created

    def complete_seeing_deletes(
        self, claim: Claim, new: NewImageRecord
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        with self._writing() as db:
            record, created = self._insert(db, new)
            self._delete_claim(db, claim)
            # After the insert, whose statement held deletes of these bytes off (_insert_sql).
            marks = self._released_seeing_deletes(db, claim.key)
        return record, created, marks if created else DeletesSeen.unknown()

    def abandon(self, claim: Claim) -> None:
        with self._leasing() as db:
            self._release(db, claim)

    def claim_many(self, keys: Sequence[CaptionKey], lease_s: float) -> Mapping[CaptionKey, Claim]:
        owner = Claim.new_owner()
        distinct = list(dict.fromkeys(keys))
        claimed: dict[CaptionKey, Claim] = {}
        for start in range(0, len(distinct), _ROWS_PER_STATEMENT):
            part = distinct[start : start + _ROWS_PER_STATEMENT]
            values = [v for k in part for v in (k.sha256, k.model, k.prompt, owner, lease_s)]
            with self._leasing() as db:
                rows = db.execute(self._claim_rows_sql(len(part)), values).fetchall()
            for sha256, model, prompt, running, ticket in rows:
                key = CaptionKey(str(sha256), str(model), str(prompt))
                claimed[key] = Claim(key, owner, deletes_seen(running, ticket))
        return claimed

    def complete_many(
        self, done: Sequence[tuple[Claim, NewImageRecord]]
    ) -> Sequence[tuple[ImageRecord, bool, DeletesSeen]]:
        if not done:
            return []
        with self._writing() as db:  # the records and the claims' release: one transaction
            stored = self._insert_records(db, [new for _, new in done])
            self._release_many(db, [claim for claim, _ in done])
            # After the inserts, whose statements held deletes of these bytes off
            # (_insert_rows_sql), as complete_seeing_deletes reads them for one record.
            marks = self._marks_many(db, [record.sha256 for record, created in stored if created])
        return [
            (record, created, marks[record.sha256] if created else DeletesSeen.unknown())
            for record, created in stored
        ]

    def release(self, claims: Sequence[Claim]) -> None:
        if not claims:
            return
        with self._leasing() as db:
            self._release_many(db, claims)

    # --- the caption queue: pending records, taken in batches under the claims' leases -------

    def enqueue(self, new: NewImageRecord, urgent: bool = False) -> tuple[ImageRecord, bool]:
        record, created, _ = self._enqueue(new, urgent, seeing_deletes=False)
        return record, created

    def enqueue_seeing_deletes(
        self, new: NewImageRecord, urgent: bool = False
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        return self._enqueue(new, urgent, seeing_deletes=True)

    def _enqueue(
        self, new: NewImageRecord, urgent: bool, seeing_deletes: bool
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        p = self.dialect.mark
        pending = dataclasses.replace(new, status=PENDING)
        with self._writing() as db:
            row = db.execute(
                self._enqueue_sql, (*new_values(pending, self.dialect), int(urgent))
            ).fetchone()
            if row is not None:
                # After the insert, whose statement held deletes off (_enqueue_sql).
                marks = self._marks(db, new.sha256) if seeing_deletes else DeletesSeen.unknown()
                return self._record(row), True, marks
            if urgent:  # a caller now waits for it: it goes before the asynchronous ones
                db.execute(
                    f"""UPDATE images SET priority = 1 WHERE sha256 = {p} AND model = {p}
                        AND prompt = {p} AND status = '{PENDING}'""",
                    (new.sha256, new.model, new.prompt),
                )
            existing = db.execute(self._find_sql, (new.sha256, new.model, new.prompt)).fetchone()
        if existing is None:  # deleted between the two statements: queue ours after all
            return self._enqueue(new, urgent, seeing_deletes)
        return self._record(existing), False, DeletesSeen.unknown()

    def take(self, model: str, lease_s: float, limit: int) -> Sequence[QueuedCaption]:
        d = self.dialect
        p = d.mark
        # An idle worker looks often: a read says "nothing queued" without taking the write
        # lock (SQLite's is the whole database's).
        if not self._one(
            f"SELECT EXISTS (SELECT 1 FROM images WHERE status = '{PENDING}' AND model = {p})",
            (model,),
        )[0]:
            return []
        owner = Claim.new_owner()  # one owner for the batch: the key tells its claims apart
        taken = []
        with self._writing() as db:
            rows = db.execute(
                f"""SELECT {columns_of("i")} FROM images AS i
                    WHERE i.status = '{PENDING}' AND i.model = {p}
                      AND (i.next_attempt_at IS NULL OR i.next_attempt_at <= {d.clock})
                      AND NOT EXISTS (
                        SELECT 1 FROM caption_claims AS c
                        WHERE c.sha256 = i.sha256 AND c.model = i.model AND c.prompt = i.prompt
                          AND c.expires_at > {d.clock})
                    ORDER BY i.priority DESC, i.id LIMIT {p}{self.take_lock}""",
                (model, limit),
            ).fetchall()
            for row in rows:
                record = self._record(row)
                key = CaptionKey(record.sha256, record.model, record.prompt)
                claimed = db.execute(
                    self._claim_sql, (key.sha256, key.model, key.prompt, owner, lease_s)
                ).fetchone()
                if claimed is not None:
                    taken.append(QueuedCaption(record, Claim(key, owner)))
        return taken

    def finish(self, done: Sequence[CaptionDone]) -> Sequence[ImageRecord]:
        p = self.dialect.mark
        kept = []
        with self._writing() as db:  # the captions and the claims' release: one transaction
            for item in done:
                row = db.execute(
                    f"""UPDATE images SET description = {p}, status = '{CAPTIONED}',
                            failure = NULL, next_attempt_at = NULL, model_revision = {p},
                            generation = {p}, duration_ms = {p}
                        WHERE id = {p} AND status <> '{CAPTIONED}' RETURNING {COLUMNS}""",
                    (
                        item.description,
                        item.provenance.model_revision,
                        self.dialect.encode_json(item.provenance.settings),
                        item.duration_ms,
                        item.record_id,
                    ),
                ).fetchone()
                if row is not None:  # else deleted, cancelled or captioned meanwhile
                    kept.append(self._record(row))
                self._release(db, item.claim)
        return kept

    def fail(
        self, item: QueuedCaption, reason: str, max_attempts: int, retry_in_s: float
    ) -> ImageRecord | None:
        d = self.dialect
        p = d.mark
        with self._writing() as db:
            row = db.execute(
                f"""UPDATE images SET attempts = attempts + 1, failure = {p},
                        status = CASE WHEN attempts + 1 >= {p} THEN '{FAILED}'
                                      ELSE '{PENDING}' END,
                        next_attempt_at = {d.lease_end}
                    WHERE id = {p} AND status = '{PENDING}' RETURNING {COLUMNS}""",
                (reason, max_attempts, retry_in_s, item.record.id),
            ).fetchone()
            self._release(db, item.claim)
        return self._record(row) if row else None

    def await_settled(self, key: CaptionKey, timeout_s: float) -> ImageRecord | None:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self._wakeups(key)
            row = self._one(self._find_sql, (key.sha256, key.model, key.prompt))
            if row is None:
                return None  # deleted or cancelled meanwhile
            record = self._record(row)
            left = deadline - time.monotonic()
            if record.status != PENDING or left <= 0:
                return record
            self._wait(key, seen, min(self.claim_poll_s, left))

    def queue_status(self, alive_s: float, count_captioned: bool = True) -> QueueStatus:
        d = self.dialect
        counts: dict[str, int] = {PENDING: 0, FAILED: 0}
        # The queue's rows alone, from the status index: cheap however big the catalogue is.
        for status, count in self._all(
            f"SELECT status, count(*) FROM images WHERE status <> '{CAPTIONED}' GROUP BY status"
        ):
            counts[str(status)] = int(count)
        if count_captioned:  # a count of every caption: for people asking, not for probes
            captioned = f"SELECT count(*) FROM images WHERE status = '{CAPTIONED}'"
            counts = {CAPTIONED: int(self._one(captioned)[0]), **counts}
        oldest = self._one(f"SELECT min(created_at) FROM images WHERE status = '{PENDING}'")[0]
        age = None
        if oldest is not None:
            since = datetime.now(timezone.utc) - d.decode_time(oldest)
            age = max(0.0, since.total_seconds())
        rows = self._all(
            f"""SELECT name, model, {self.age_of.format(clock=d.clock, column="seen_at")}
                FROM workers WHERE seen_at > {d.lease_end} ORDER BY name""",
            (-alive_s,),
        )
        workers = tuple(WorkerSeen(str(n), str(m), max(0.0, float(a))) for n, m, a in rows)
        return QueueStatus(counts, age, workers)

    def heartbeat(self, name: str, model: str) -> None:
        d = self.dialect
        p = d.mark
        with self._writing() as db:
            db.execute(
                f"""INSERT INTO workers (name, model, seen_at) VALUES ({p}, {p}, {d.clock})
                    ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at""",
                (name, model),
            )
            # Workers gone a day are nobody's news.
            db.execute(f"DELETE FROM workers WHERE seen_at < {d.lease_end}", (-86400.0,))

    def forget_worker(self, name: str) -> None:
        self._run(f"DELETE FROM workers WHERE name = {self.dialect.mark}", (name,))

    def jobs(self, status: str | None = None, limit: int = 1000) -> Sequence[ImageRecord]:
        p = self.dialect.mark
        wanted = (status,) if status else (PENDING, FAILED)
        one_of, values = self.dialect.one_of("status", wanted)
        rows = self._all(
            f"SELECT {COLUMNS} FROM images WHERE {one_of} ORDER BY id LIMIT {p}",
            (*values, limit),
        )
        return [self._record(row) for row in rows]

    def retry(self, record_id: int | None = None) -> int:
        p = self.dialect.mark
        which, params = ("", ()) if record_id is None else (f" AND id = {p}", (record_id,))
        with self._writing() as db:
            return int(
                db.execute(
                    f"""UPDATE images SET status = '{PENDING}', attempts = 0, failure = NULL,
                            next_attempt_at = NULL WHERE status = '{FAILED}'{which}""",
                    params,
                ).rowcount
            )

    # --- deletes of bytes in flight: what lets an upload skip re-checking its file ----------

    def deletes_of(self, sha256: str) -> DeletesSeen:
        with self._reading() as db:
            return self._marks(db, sha256)

    def find_seeing_deletes(
        self, sha256: str, model: str, prompt: str
    ) -> tuple[ImageRecord | None, DeletesSeen]:
        row = self._one(self._find_seeing_deletes_sql, (sha256, sha256, sha256, model, prompt))
        width = len(RECORD_COLUMNS)
        record = self._record(row) if row[0] is not None else None
        return record, deletes_seen(row[width], row[width + 1])

    def begin_delete(self, sha256: str) -> None:
        d = self.dialect
        p = d.mark
        with self._writing() as db:
            # Inserts of these bytes' records in progress commit first: their deletes-seen,
            # read after their insert, cannot miss this mark unless it follows their commit.
            self._lock_bytes_deletes(db, sha256)
            db.execute(
                f"""INSERT INTO bytes_deletes (sha256, running, ticket, changed_at)
                    VALUES ({p}, 1, {p}, {d.clock})
                    ON CONFLICT (sha256) DO UPDATE SET running = bytes_deletes.running + 1,
                        ticket = excluded.ticket, changed_at = excluded.changed_at""",
                (sha256, DeletesSeen.new_ticket()),
            )

    def end_delete(self, sha256: str, forget_after_s: float, stale_after_s: float) -> None:
        d = self.dialect
        p = d.mark
        with self._writing() as db:
            db.execute(
                f"""UPDATE bytes_deletes SET running = running - 1, changed_at = {d.clock}
                    WHERE sha256 = {p} AND running > 0""",
                (sha256,),
            )
            # Finished long ago: an upload that read them before is long done (one that ran
            # that long re-checks anyway), so the digests of deleted images do not stay.
            db.execute(
                f"DELETE FROM bytes_deletes WHERE running = 0 AND changed_at < {d.lease_end}",
                (-forget_after_s,),
            )
            # Died long ago: whatever they did to the file is over. The fresh ticket makes
            # uploads that read the marks before still re-check.
            db.execute(
                f"""UPDATE bytes_deletes SET running = 0, ticket = {p}, changed_at = {d.clock}
                    WHERE running > 0 AND changed_at < {d.lease_end}""",
                (DeletesSeen.new_ticket(), -stale_after_s),
            )

    # --- API keys and sessions --------------------------------------------------------------

    def add_key(self, key: ApiKey, key_sha256: str) -> None:
        try:
            self._run(
                f"""INSERT INTO api_keys (name, scope, key_sha256, created_at)
                    VALUES ({self.dialect.marks(4)})""",
                (key.name, key.scope.value, key_sha256, self.dialect.encode_time(key.created_at)),
            )
        except self.duplicate_key:
            raise KeyNameTaken(f"An API key named {key.name!r} exists already.") from None

    def key_with_hash(self, key_sha256: str) -> tuple[ApiKey, str] | None:
        row = self._one(
            f"""SELECT {KEY_COLUMNS}, k.key_sha256 FROM api_keys AS k
                WHERE k.key_sha256 = {self.dialect.mark}""",
            (key_sha256,),
        )
        return (key_of(row, self.dialect), str(row[4])) if row else None

    def all_keys(self) -> Sequence[ApiKey]:
        rows = self._all(f"SELECT {KEY_COLUMNS} FROM api_keys AS k ORDER BY k.created_at, k.name")
        return [key_of(row, self.dialect) for row in rows]

    def has_keys(self) -> bool:
        return bool(self._one("SELECT EXISTS (SELECT 1 FROM api_keys)")[0])

    def remove_key(self, name: str) -> bool:
        # Its sessions go with it (ON DELETE CASCADE).
        p = self.dialect.mark
        return (
            self._write(f"DELETE FROM api_keys WHERE name = {p} RETURNING name", (name,))
            is not None
        )

    def mark_used(self, name: str, when: datetime) -> None:
        p = self.dialect.mark
        self._run(
            f"UPDATE api_keys SET last_used_at = {p} WHERE name = {p}",
            (self.dialect.encode_time(when), name),
        )

    def add_session(self, token_sha256: str, key_name: str, expires_at: datetime) -> None:
        d = self.dialect
        with self._writing() as db:
            db.execute(f"DELETE FROM api_sessions WHERE expires_at <= {d.stamp_now}", ())
            db.execute(
                f"""INSERT INTO api_sessions (token_sha256, key_name, expires_at)
                    VALUES ({d.marks(3)})""",
                (token_sha256, key_name, d.encode_time(expires_at)),
            )

    def key_of_session(self, token_sha256: str, now: datetime) -> tuple[ApiKey, str] | None:
        p = self.dialect.mark
        row = self._one(
            f"""SELECT {KEY_COLUMNS}, s.token_sha256
                FROM api_sessions AS s JOIN api_keys AS k ON k.name = s.key_name
                WHERE s.token_sha256 = {p} AND s.expires_at > {p}""",
            (token_sha256, self.dialect.encode_time(now)),
        )
        return (key_of(row, self.dialect), str(row[4])) if row else None

    def remove_session(self, token_sha256: str) -> None:
        p = self.dialect.mark
        self._run(f"DELETE FROM api_sessions WHERE token_sha256 = {p}", (token_sha256,))

    # --- recent hits: the one count behind throttles (wrong keys), shared by every replica --

    def wait_s(self, counter: str, who: str, limit: int, window_s: float) -> float | None:
        with self._reading() as db:
            return self._hits_wait(db, counter, who, limit, window_s)

    def add_hit(self, counter: str, who: str, limit: int, window_s: float) -> float | None:
        d = self.dialect
        p = d.mark
        with self._writing() as db:
            # Counted under a lock, so hits arriving at once on several replicas cannot all
            # see room for one more.
            self._lock_hits(db, counter, who)
            # Hits out of the window count for nobody: dropped for every identity, so
            # addresses that never come back leave nothing behind.
            db.execute(
                f"DELETE FROM recent_hits WHERE counter = {p} AND at <= {d.lease_end}",
                (counter, -window_s),
            )
            wait = self._hits_wait(db, counter, who, limit, window_s)
            if wait is None:
                db.execute(
                    f"INSERT INTO recent_hits (counter, who, at) VALUES ({p}, {p}, {d.clock})",
                    (counter, who),
                )
            return wait

    def _hits_wait(
        self, db: Executes, counter: str, who: str, limit: int, window_s: float
    ) -> float | None:
        # The limit-th newest hit in the window: once it leaves, there is room for one more.
        d = self.dialect
        p = d.mark
        row = db.execute(
            f"""SELECT {self.age_of.format(clock=d.clock, column="at")} FROM recent_hits
                WHERE counter = {p} AND who = {p} AND at > {d.lease_end}
                ORDER BY at DESC LIMIT 1 OFFSET {p}""",
            (counter, who, -window_s, limit - 1),
        ).fetchone()
        return None if row is None else max(0.0, window_s - float(row[0]))

    # --- shared helpers ---------------------------------------------------------------------

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._reading() as db:
            return db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any]:
        with self._reading() as db:
            return db.execute(sql, params).fetchall()

    def _write(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one write and give back its first row (of RETURNING)."""
        with self._writing() as db:
            return db.execute(sql, params).fetchone()

    def _write_all(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any]:
        """Run one write and give back every row of its RETURNING."""
        with self._writing() as db:
            return db.execute(sql, params).fetchall()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one write that returns no rows."""
        with self._writing() as db:
            db.execute(sql, params)

    def _record(self, row: Sequence[Any]) -> ImageRecord:
        return record_of(row, self.dialect)

    # The statements of every insert and lookup, spelled once per catalogue (not per call).

    @functools.cached_property
    def _find_sql(self) -> str:
        p = self.dialect.mark
        return f"SELECT {COLUMNS} FROM images WHERE sha256 = {p} AND model = {p} AND prompt = {p}"

    @functools.cached_property
    def _insert_sql(self) -> str:
        return self._insert_rows_sql(1)

    def _insert_rows_sql(self, count: int) -> str:
        # A pending or failed record of the key becomes this caption (the queue's entry is
        # done); a captioned one stays, and the caller gets it.
        d = self.dialect
        kept = ("sha256", "model", "prompt", "path", "original_name")
        updates = ", ".join(f"{c} = excluded.{c}" for c in NEW_COLUMNS if c not in kept)
        rows = ", ".join([f"({d.marks(len(NEW_COLUMNS))}, {d.stamp_now})"] * count)
        return f"""INSERT INTO images ({", ".join(NEW_COLUMNS)}, created_at)
                   VALUES {rows}
                   ON CONFLICT (sha256, model, prompt) DO UPDATE
                       SET {updates}, failure = NULL, next_attempt_at = NULL
                       WHERE images.status <> '{CAPTIONED}'
                   RETURNING {COLUMNS}{self.holding_deletes}"""

    @functools.cached_property
    def _enqueue_sql(self) -> str:
        d = self.dialect
        return f"""INSERT INTO images ({", ".join(NEW_COLUMNS)}, priority, created_at)
                   VALUES ({d.marks(len(NEW_COLUMNS) + 1)}, {d.stamp_now})
                   ON CONFLICT (sha256, model, prompt) DO NOTHING
                   RETURNING {COLUMNS}{self.holding_deletes}"""

    @functools.cached_property
    def _claim_sql(self) -> str:
        return self._claim_rows_sql(1)

    def _claim_rows_sql(self, count: int) -> str:
        # Upsert that only overwrites an expired claim: taking over is as atomic as claiming.
        # The marks of deletes of the claimed bytes come back with it: what an upload reads
        # before it stores the file costs it no extra round trip.
        d = self.dialect
        marks = "(SELECT {} FROM bytes_deletes AS b WHERE b.sha256 = caption_claims.sha256)"
        rows = ", ".join([f"({d.marks(4)}, {d.lease_end})"] * count)
        return f"""INSERT INTO caption_claims (sha256, model, prompt, owner, expires_at)
                   VALUES {rows}
                   ON CONFLICT (sha256, model, prompt) DO UPDATE
                       SET owner = excluded.owner, expires_at = excluded.expires_at
                       WHERE caption_claims.expires_at <= {d.clock}
                   RETURNING sha256, model, prompt, {marks.format("running")},
                             {marks.format("ticket")}"""

    def _marks_many(self, db: Executes, sha256s: Sequence[str]) -> dict[str, DeletesSeen]:
        """``_marks`` of many digests, a few hundred a statement."""
        p = self.dialect.mark
        distinct = list(dict.fromkeys(sha256s))
        found: dict[str, DeletesSeen] = {}
        for start in range(0, len(distinct), _ROWS_PER_STATEMENT):
            part = distinct[start : start + _ROWS_PER_STATEMENT]
            rows = db.execute(
                f"""SELECT sha256, running, ticket FROM bytes_deletes
                    WHERE sha256 IN ({", ".join([p] * len(part))})""",
                part,
            ).fetchall()
            found.update({str(row[0]): deletes_seen(row[1], row[2]) for row in rows})
        return {sha256: found.get(sha256, deletes_seen(None, None)) for sha256 in distinct}

    def _marks(self, db: Executes, sha256: str) -> DeletesSeen:
        p = self.dialect.mark
        row = db.execute(
            f"SELECT running, ticket FROM bytes_deletes WHERE sha256 = {p}", (sha256,)
        ).fetchone()
        return deletes_seen(*(row or (None, None)))

    @functools.cached_property
    def _find_seeing_deletes_sql(self) -> str:
        p = self.dialect.mark
        marks = "(SELECT {} FROM bytes_deletes WHERE sha256 = " + p + ")"
        return f"""SELECT {columns_of("i")}, {marks.format("running")}, {marks.format("ticket")}
                   FROM (VALUES (1)) AS one
                   LEFT JOIN images AS i ON i.sha256 = {p} AND i.model = {p} AND i.prompt = {p}"""

    @functools.cached_property
    def _shown_columns(self) -> str:
        # The shown caption's record, its image's id and how many captions the image has.
        return (
            columns_of("c") + ", f.id, (SELECT count(*) FROM images AS n WHERE n.sha256 = f.sha256)"
        )

    @functools.cached_property
    def _shown_caption(self) -> str:
        # The caption a listing shows for image f, in the order of domain.model.caption_rank
        # (a person's caption, then the preferred model and prompt, then the newest);
        # `(NOT ? OR ...)` keeps only the preferred model's captions when asked. The UNIQUE
        # (sha256, model, prompt) index finds the image's few captions.
        p = self.dialect.mark
        return f"""(
            SELECT k.id FROM images AS k WHERE k.sha256 = f.sha256 AND (NOT {p} OR k.model = {p})
            ORDER BY (k.model = '{PERSON_MODEL}') DESC, (k.model = {p} AND k.prompt = {p}) DESC,
                     k.id DESC LIMIT 1)"""

    @functools.cached_property
    def _newest_sql(self) -> str:
        # Walks the images' first records alone (the images_firsts index), newest first.
        p = self.dialect.mark
        return f"""SELECT {self._shown_columns}
                   FROM {self.firsts} JOIN images AS c ON c.id = {self._shown_caption}
                   WHERE f.id = f.image_id AND f.id <= {p}{self.firsts_guard}
                   ORDER BY f.id DESC LIMIT {p}"""

    @functools.cached_property
    def _search_sql(self) -> str:
        # From the matching captions, those that are their image's shown caption.
        p, text = self.dialect.mark, self.full_text
        return f"""SELECT {self._shown_columns}
                   FROM {text.source} JOIN images AS f ON f.id = {first_of("c")}
                   WHERE {text.matches} AND c.id = {self._shown_caption} AND f.id <= {p}
                   ORDER BY {text.rank}, f.id DESC LIMIT {p}"""

    @property
    def _first_without(self) -> str:
        # The first record of each distinct image (by bytes) that has no record by (model,
        # prompt); the UNIQUE (sha256, model, prompt) index answers both subqueries.
        p = self.dialect.mark
        return f"""
            i.id = (SELECT min(j.id) FROM images AS j WHERE j.sha256 = i.sha256)
            AND NOT EXISTS (
                SELECT 1 FROM images AS k
                WHERE k.sha256 = i.sha256 AND k.model = {p} AND k.prompt = {p}
            )"""

    def _insert(self, db: Executes, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        row = db.execute(self._insert_sql, new_values(new, self.dialect)).fetchone()
        if row is not None:
            return self._record(row), True
        # Committed by another writer first; the transaction sees it (SQLite holds the write
        # lock, PostgreSQL reads committed rows in each statement).
        existing = db.execute(self._find_sql, (new.sha256, new.model, new.prompt)).fetchone()
        if existing is None:
            return self._insert(db, new)  # and deleted again just now: insert ours after all
        return self._record(existing), False

    def _insert_records(
        self, db: Executes, news: Sequence[NewImageRecord]
    ) -> Sequence[tuple[ImageRecord, bool]]:
        """``_insert`` for records of distinct keys, a few hundred rows a statement."""
        made: dict[tuple[str, str, str], ImageRecord] = {}
        for start in range(0, len(news), _ROWS_PER_STATEMENT):
            part = news[start : start + _ROWS_PER_STATEMENT]
            values = [value for new in part for value in new_values(new, self.dialect)]
            for row in db.execute(self._insert_rows_sql(len(part)), values).fetchall():
                record = self._record(row)
                made[(record.sha256, record.model, record.prompt)] = record
        # One not inserted: the key's captioned record was there first (the rare case, a
        # statement or two each).
        return [
            (made[key], True) if key in made else self._insert(db, new)
            for new, key in ((new, (new.sha256, new.model, new.prompt)) for new in news)
        ]

    def _release_many(self, db: Executes, claims: Sequence[Claim]) -> None:
        """``_release`` for many claims, one statement per owner and few hundred keys."""
        p = self.dialect.mark
        owners: dict[str, list[CaptionKey]] = {}
        for claim in claims:
            owners.setdefault(claim.owner, []).append(claim.key)
        for owner, keys in owners.items():
            for start in range(0, len(keys), _ROWS_PER_STATEMENT):
                part = keys[start : start + _ROWS_PER_STATEMENT]
                rows = ", ".join([f"({p}, {p}, {p})"] * len(part))
                db.execute(
                    f"""DELETE FROM caption_claims
                        WHERE owner = {p} AND (sha256, model, prompt) IN (VALUES {rows})""",
                    (owner, *(v for key in part for v in (key.sha256, key.model, key.prompt))),
                )
        self._released_many(db, [claim.key for claim in claims])

    def _release(self, db: Executes, claim: Claim) -> None:
        self._delete_claim(db, claim)
        self._released(db, claim.key)

    def _delete_claim(self, db: Executes, claim: Claim) -> None:
        key, p = claim.key, self.dialect.mark
        db.execute(
            f"""DELETE FROM caption_claims
                WHERE sha256 = {p} AND model = {p} AND prompt = {p} AND owner = {p}""",
            (key.sha256, key.model, key.prompt, claim.owner),
        )


def deletes_seen(running: Any, ticket: Any) -> DeletesSeen:
    """The marks of deletes as a statement read them (None: no delete of the bytes on record)."""
    return DeletesSeen.now(int(running or 0), str(ticket or ""))


def first_of(alias: str) -> str:
    """The id of the first record of the image that record ``alias`` describes."""
    return f"(SELECT min(j.id) FROM images AS j WHERE j.sha256 = {alias}.sha256)"
