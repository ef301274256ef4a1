"""The catalogue on PostgreSQL: a psycopg pool, advisory-locked migrations, tsvector, 503s."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from captioner.adapters.catalogue.dialect import Dialect
from captioner.adapters.catalogue.migrations import schema_steps, upgrade
from captioner.adapters.catalogue.postgres_faults import (
    DatabaseTarget,
    connection_fault,
    first_line,
    privilege_fault,
)
from captioner.adapters.catalogue.postgres_listener import CHANNEL, ClaimListener
from captioner.adapters.catalogue.search import TSVECTOR
from captioner.adapters.catalogue.sql import Executes, SqlCatalogue, deletes_seen, first_of
from captioner.adapters.catalogue.tables import Shape, TableRows, holds_library
from captioner.domain.errors import CatalogueUnavailable
from captioner.domain.model import CaptionKey, DeletesSeen, Readiness
from captioner.domain.ports import Table, Value

log = logging.getLogger(__name__)

# Any constant shared by every replica: the advisory lock key under which migrations run.
_MIGRATION_LOCK = 0x6361_7074_696F_6E  # "caption"
# The first key of the advisory locks that order one identity's hits (the second is its hash).
_HITS_LOCK = 0x6869_7473  # "hits"
# The first key of the advisory locks that order an insert of some bytes' record and a
# delete's mark of those bytes (the second is the digest's hash).
_BYTES_LOCK = 0x6279_7465  # "byte"
# NOTIFY is best-effort (lost while the listener reconnects): waiters also look this often.
_CLAIM_POLL_S = 0.5


def _whole(script: str) -> Iterable[str]:
    # psycopg runs a parameterless script of many statements in one call.
    return (script,)


POSTGRES = Dialect(
    mark="%s",
    # The database's clock for leases: replicas' own clocks may differ.
    clock="now()",
    lease_end="now() + make_interval(secs => %s)",
    stamp_now="now()",
    stamp_type="TIMESTAMPTZ",
    encode_time=lambda when: when,
    decode_time=lambda value: value,  # psycopg gives TIMESTAMPTZ as aware datetimes
    encode_json=Jsonb,
    decode_json=lambda value: value,  # and JSONB as dicts
    one_of=lambda column, values: (f"{column} = ANY(%s)", (list(values),)),
    statements=_whole,
)


class PostgresCaptionRepository(SqlCatalogue, TableRows):
    """Implements the CaptionRepository (and CatalogueTables) port on a shared PostgreSQL
    database.

    Every operation borrows a pooled connection for one short transaction; none is held
    while the model works. Connection failures become CatalogueUnavailable (HTTP 503), and
    the pool replaces broken connections by itself once the server is back. Faults no retry
    cures (wrong password, no such role or database, missing privileges) are permanent
    (``retry_after_s=None``) and say what to run; they stop the constructor before the pool
    opens, so nothing keeps retrying them in the background.
    """

    dialect = POSTGRES
    full_text = TSVECTOR
    # Two first records of the same new bytes inserted at once by two replicas both look
    # first to their own transactions: the MIN guard shows the image once.
    firsts_guard = f" AND f.id = {first_of('f')}"
    duplicate_key = (psycopg.errors.UniqueViolation,)
    # Two workers taking batches at once get different rows, neither waits for the other.
    take_lock = " FOR UPDATE OF i SKIP LOCKED"
    age_of = "extract(epoch FROM ({clock} - {column}))"
    # Shared, until commit: a delete's mark of the same bytes (exclusive) waits for it, or it
    # waits for the mark's commit; uploads of the same bytes never wait for each other.
    holding_deletes = f", pg_advisory_xact_lock_shared({_BYTES_LOCK}, hashtext(images.sha256))"
    # Byte order of UTF-8 is code point order, SQLite's BINARY collation.
    by_code_point = ' COLLATE "C"'

    def __init__(
        self,
        url: str,
        max_connections: int = 20,
        connect_timeout_s: float = 3.0,
        claim_poll_s: float = _CLAIM_POLL_S,
    ) -> None:
        self._url = url
        self._target = DatabaseTarget.of(url)
        self.claim_poll_s = claim_poll_s
        self._connect_timeout_s = connect_timeout_s
        # One plain connection first: the pool's own attempts would only log the cause and
        # retry a wrong password for minutes, while the caller waits for a bare timeout.
        self._probe()
        # A permanent connection fault found while serving (a password changed, the role
        # dropped): the pool is closed rather than left retrying it in the background.
        self._refused: CatalogueUnavailable | None = None
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[TupleRow]] = (
            psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=max_connections,
                kwargs={"connect_timeout": max(1, round(connect_timeout_s))},
                # A connection that died with the server is found out before it is handed to
                # a request, which then gets a fresh one instead of an error.
                check=psycopg_pool.ConnectionPool.check_connection,
                timeout=connect_timeout_s,
                open=False,
                name="captioner",
            )
        )
        self._pool.open(wait=False)
        self._listener = ClaimListener(url, connect_timeout_s)
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def readiness(self) -> Readiness:
        try:
            row = self._one("SELECT pg_is_in_recovery()")
        except CatalogueUnavailable as error:
            return Readiness(False, str(error), permanent=error.retry_after_s is None)
        if row[0]:
            return Readiness(
                False, "database is a read-only standby: point database_url at the primary"
            )
        return Readiness.ok()

    def close(self) -> None:
        self._listener.close()
        self._pool.close()

    def _lock_images(self, db: Executes) -> None:
        # Other writers wait (readers do not) until the transaction commits.
        db.execute("LOCK TABLE images IN SHARE ROW EXCLUSIVE MODE", ())

    def _lock_hits(self, db: Executes, counter: str, who: str) -> None:
        # Until commit: only the same identity's hits wait, and a hash collision only
        # makes two identities wait for each other.
        db.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_HITS_LOCK, f"{counter} {who}")
        )

    def _released(self, db: Executes, key: CaptionKey) -> None:
        # Delivered at commit, to every replica's listener: their waiters look again at once.
        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key.sha256))

    def _released_many(self, db: Executes, keys: Sequence[CaptionKey]) -> None:
        db.execute(
            "SELECT pg_notify(%s, sha256) FROM unnest(%s::text[]) AS sha256",
            (CHANNEL, [key.sha256 for key in keys]),
        )

    def _released_seeing_deletes(self, db: Executes, key: CaptionKey) -> DeletesSeen:
        # The notify and the marks in one statement: the upload's look at the marks after
        # its insert costs no round trip (read committed: this statement sees every mark
        # committed before the insert's lock was granted).
        row = db.execute(
            """SELECT pg_notify(%s, %s),
                      (SELECT running FROM bytes_deletes WHERE sha256 = %s),
                      (SELECT ticket FROM bytes_deletes WHERE sha256 = %s)""",
            (CHANNEL, key.sha256, key.sha256, key.sha256),
        ).fetchone()
        return deletes_seen(row[1], row[2])

    def _lock_bytes_deletes(self, db: Executes, sha256: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_BYTES_LOCK, sha256))

    def _wakeups(self, key: CaptionKey) -> int:
        return self._listener.wakeups(key.sha256)

    def _wait(self, key: CaptionKey, seen: int, timeout_s: float) -> None:
        self._listener.wait(key.sha256, seen, timeout_s)

    def _reading(self) -> contextlib.AbstractContextManager[Executes]:
        return self._transaction()

    def _writing(self) -> contextlib.AbstractContextManager[Executes]:
        return self._transaction()

    @contextlib.contextmanager
    def _leasing(self) -> Iterator[Executes]:
        """A claims-only transaction whose commit does not wait for the WAL's flush: it is
        visible to every session at once, and the next durable commit (the record's) flushes
        it with its own."""
        with self._transaction() as db:
            db.execute("SET LOCAL synchronous_commit = off")
            yield db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """One short transaction on a pooled connection; database faults become 503s."""
        if self._refused is not None:
            raise self._refused
        try:
            with self._pool.connection() as db:
                yield db
        except psycopg_pool.PoolTimeout as error:  # an OperationalError too: look first
            # The pool only says it waited; one plain connection says why.
            fault = self._diagnosed()
            if fault.retry_after_s is None:
                self._refuse(fault)
            raise fault from error
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            raise connection_fault(error, self._target) from error
        except psycopg.errors.InsufficientPrivilege as error:
            raise privilege_fault(error, self._target) from error
        except psycopg.errors.ReadOnlySqlTransaction as error:  # a standby after failover
            raise CatalogueUnavailable(f"database is read-only: {first_line(error)}") from error

    def _probe(self) -> None:
        try:
            with psycopg.connect(self._url, connect_timeout=self._connect_timeout_int):
                pass
        except psycopg.Error as error:
            raise connection_fault(error, self._target) from error

    def _refuse(self, fault: CatalogueUnavailable) -> None:
        """Stop connecting until a restart: each attempt would only log the same refusal."""
        log.error("%s; not connecting again until captioner is restarted", fault)
        self._refused = CatalogueUnavailable(f"{fault}; then restart captioner", retry_after_s=None)
        self._pool.close(timeout=1)

    def _diagnosed(self) -> CatalogueUnavailable:
        try:
            self._probe()
        except CatalogueUnavailable as fault:
            return fault
        return CatalogueUnavailable(
            f"database {self._target} is busy: no free connection within "
            f"{self._connect_timeout_s:g} s; retry shortly, or raise `threads` and the "
            "server's max_connections together"
        )

    @property
    def _connect_timeout_int(self) -> int:
        return max(1, round(self._connect_timeout_s))

    def _shapes(self, db: Executes) -> list[Shape]:
        columns = db.execute(
            """SELECT c.table_name, c.column_name, c.data_type, c.is_identity
               FROM information_schema.columns AS c
               JOIN information_schema.tables AS t USING (table_schema, table_name)
               WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
                 AND c.is_generated = 'NEVER'
               ORDER BY c.table_name, c.ordinal_position""",
            (),
        ).fetchall()
        keys = dict(_constraints(db, "PRIMARY KEY", "key_column_usage AS u", "u.column_name"))
        parents: dict[str, set[str]] = {}
        for child, parent in _constraints(
            db, "FOREIGN KEY", "constraint_column_usage AS u", "u.table_name"
        ):
            parents.setdefault(child, set()).add(parent)
        shapes = []
        for name in dict.fromkeys(row[0] for row in columns if holds_library(row[0])):
            mine = [row for row in columns if row[0] == name]
            key = next(row for row in mine if row[1] == keys[name])
            shapes.append(
                Shape(
                    Table(
                        name,
                        (key[1], *(row[1] for row in mine if row is not key)),
                        tuple(sorted(parents.get(name, ()))),
                    ),
                    text_key=key[2] == "text",
                    counted=key[3] == "YES",
                )
            )
        return shapes

    def _advance_key(self, db: Executes, shape: Shape) -> None:
        table = shape.table
        db.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, %s), max({table.key})) FROM {table.name}",
            (table.name, table.key),
        )

    def _insert_many(self, db: Executes, sql: str, rows: Sequence[Sequence[Value]]) -> None:
        assert isinstance(db, psycopg.Connection)
        with db.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _migrate(self) -> None:
        # The advisory lock lives as long as this transaction: replicas starting together
        # apply each migration once, in order, and the others find them applied.
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            upgrade(
                db,
                schema_steps("postgres"),
                POSTGRES,
                f"database {self._target}",
                # Permanent: no retry makes an older captioner understand a newer schema.
                refuse=lambda message: CatalogueUnavailable(message, retry_after_s=None),
            )


def _constraints(db: Executes, kind: str, usage: str, named: str) -> list[tuple[str, str]]:
    """(table, ``named``) for each constraint of ``kind`` in the schema, from the
    information schema's ``usage`` view."""
    rows = db.execute(
        f"""SELECT tc.table_name, {named} FROM information_schema.table_constraints AS tc
            JOIN information_schema.{usage} USING (constraint_schema, constraint_name)
            WHERE tc.constraint_type = %s AND tc.table_schema = current_schema()""",
        (kind,),
    ).fetchall()
    return [(str(row[0]), str(row[1])) for row in rows]
