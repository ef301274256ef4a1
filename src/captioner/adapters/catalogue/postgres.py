"""The catalogue on PostgreSQL: a psycopg pool, advisory-locked migrations, tsvector, 503s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from captioner.adapters.catalogue.dialect import Dialect
from captioner.adapters.catalogue.migrations import schema_steps, upgrade
from captioner.adapters.catalogue.postgres_listener import CHANNEL, ClaimListener, first_line
from captioner.adapters.catalogue.rows import COLUMNS
from captioner.adapters.catalogue.search import tsquery
from captioner.adapters.catalogue.sql import Executes, SqlCatalogue
from captioner.domain.errors import CatalogueUnavailable
from captioner.domain.model import CaptionKey, Readiness

# Any constant shared by every replica: the advisory lock key under which migrations run.
_MIGRATION_LOCK = 0x6361_7074_696F_6E  # "caption"
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


class PostgresCaptionRepository(SqlCatalogue):
    """Implements the CaptionRepository port on a shared PostgreSQL database.

    Every operation borrows a pooled connection for one short transaction; none is held
    while the model works. Connection failures become CatalogueUnavailable (HTTP 503), and
    the pool replaces broken connections by itself once the server is back.
    """

    dialect = POSTGRES
    duplicate_key = (psycopg.errors.UniqueViolation,)

    def __init__(
        self,
        url: str,
        max_connections: int = 20,
        connect_timeout_s: float = 3.0,
        claim_poll_s: float = _CLAIM_POLL_S,
    ) -> None:
        self._url = url
        self.claim_poll_s = claim_poll_s
        self._connect_timeout_s = connect_timeout_s
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
            return Readiness(False, str(error))
        if row[0]:
            return Readiness(
                False, "database is a read-only standby: point database_url at the primary"
            )
        return Readiness.ok()

    def close(self) -> None:
        self._listener.close()
        self._pool.close()

    def _search(self, words: str, last: int, limit: int) -> Sequence[Any] | None:
        match = tsquery(words)
        if match is None:
            return None
        return self._all(
            f"""SELECT {COLUMNS} FROM images, to_tsquery('simple', %s) AS q
                WHERE search @@ q AND id <= %s
                ORDER BY ts_rank(search, q) DESC, id DESC LIMIT %s""",
            (match, last, limit),
        )

    def _released(self, db: Executes, key: CaptionKey) -> None:
        # Delivered at commit, to every replica's listener: their waiters look again at once.
        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key.sha256))

    def _wakeups(self, key: CaptionKey) -> int:
        return self._listener.wakeups(key.sha256)

    def _wait(self, key: CaptionKey, seen: int, timeout_s: float) -> None:
        self._listener.wait(key.sha256, seen, timeout_s)

    def _reading(self) -> contextlib.AbstractContextManager[Executes]:
        return self._transaction()

    def _writing(self) -> contextlib.AbstractContextManager[Executes]:
        return self._transaction()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """One short transaction on a pooled connection; database faults become 503s."""
        try:
            with self._pool.connection() as db:
                yield db
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            raise CatalogueUnavailable(f"database unreachable: {first_line(error)}") from error
        except psycopg.errors.ReadOnlySqlTransaction as error:  # a standby after failover
            raise CatalogueUnavailable(f"database is read-only: {first_line(error)}") from error
        except psycopg_pool.PoolTimeout as error:
            raise CatalogueUnavailable(
                f"database unreachable: no connection within {self._connect_timeout_s:g} s "
                f"({first_line(error)})"
            ) from error

    def _migrate(self) -> None:
        # The advisory lock lives as long as this transaction: replicas starting together
        # apply each migration once, in order, and the others find them applied.
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            upgrade(db, schema_steps("postgres"), POSTGRES, "database")
