"""Wake-ups for waiters on PostgreSQL: one LISTEN connection per process for released claims."""

from __future__ import annotations

import logging
import threading

import psycopg

from captioner.adapters.catalogue.postgres_faults import first_line

log = logging.getLogger(__name__)

# The channel a released claim is announced on, its payload the digest.
CHANNEL = "captioner_claims"


class ClaimListener:
    """One LISTEN connection per process: wakes waiters when a claim is completed or abandoned.

    Started on the first wait, so a replica that never waits holds no extra connection.
    Notifications lost while it reconnects are covered by the waiters' polling.
    """

    def __init__(self, url: str, connect_timeout_s: float) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._counts: dict[str, int] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def wakeups(self, sha256: str) -> int:
        """How many releases of these bytes were heard so far (starts listening)."""
        with self._changed:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="captioner-claim-listener", daemon=True
                )
                self._thread.start()
            return self._counts.get(sha256, 0)

    def wait(self, sha256: str, seen: int, timeout_s: float) -> None:
        """Until a release of these bytes after ``seen`` is heard, or ``timeout_s`` passed."""
        with self._changed:
            self._changed.wait_for(lambda: self._counts.get(sha256, 0) != seen, timeout_s)

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout_s)),
                ) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.1
                    while not self._stopping.is_set():
                        for note in db.notifies(timeout=0.5):
                            self._wake(note.payload)
            except psycopg.Error as error:
                log.debug("claim listener reconnecting: %s", first_line(error))
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _wake(self, sha256: str) -> None:
        with self._changed:
            self._counts[sha256] = self._counts.get(sha256, 0) + 1
            self._changed.notify_all()
