"""Backups of the PostgreSQL catalogue with pg_dump and pg_restore: the dump and the list of
files it needs are read from one exported snapshot, so they agree however busy the server."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from captioner.adapters.catalogue.migrations import newer_than_known
from captioner.adapters.catalogue.postgres_faults import DatabaseTarget
from captioner.domain.errors import BackupRefused
from captioner.domain.model import CatalogueSnapshot

_NO_TOOL = (
    "{tool} is not on PATH: install PostgreSQL's client programs (Debian: "
    "`apt-get install postgresql-client`, of the server's major version or newer)."
)


class PostgresCatalogueBackups:
    """Implements the CatalogueBackups port for the database at ``url``."""

    engine = "postgres"
    file_name = "catalogue.pgdump"

    def __init__(self, url: str, timeout_s: float = 3600.0) -> None:
        self._url = url
        self._timeout_s = timeout_s

    def snapshot(self, target: Path) -> CatalogueSnapshot:
        with psycopg.connect(self._url, autocommit=True) as db:
            # The exported snapshot lives as long as this transaction: pg_dump reads through
            # it, and so do the counts and paths below.
            db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = db.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            self._run(
                "pg_dump",
                ["--format=custom", f"--snapshot={row[0]}", "--no-owner", "--no-privileges"],
                ["--file", str(target)],
            )
            snapshot = _contents(db)
            db.execute("COMMIT")
        return snapshot

    def problem_with(self, copy: Path) -> str | None:
        # The schema rows, printed from the dump (no database touched): proves the archive
        # reads, and tells a dump from a newer captioner before anything is replaced.
        try:
            script = self._run(
                "pg_restore",
                ["--data-only", "--table=schema_migrations", "--file=-", str(copy)],
                [],
                connect=False,
            )
        except BackupRefused as refused:
            return f"{copy.name} cannot be read: {refused}"
        version = max(_copied_versions(script), default=0)
        return newer_than_known(copy.name, version, "postgres")

    def holds_a_library(self) -> bool:
        with psycopg.connect(self._url, autocommit=True) as db:
            held = [
                db.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()
                for table in ("images", "api_keys")
                if _has_table(db, table)
            ]
        return any(row is not None and row[0] for row in held)

    def restore(self, copy: Path) -> None:
        # --clean --if-exists: a database a server has already given the empty schema takes
        # the copy too; --single-transaction: a failure part way leaves it as it was.
        self._run(
            "pg_restore",
            ["--clean", "--if-exists", "--single-transaction", "--exit-on-error"],
            ["--no-owner", "--no-privileges", str(copy)],
        )

    def _run(
        self, tool: str, options: Sequence[str], rest: Sequence[str], connect: bool = True
    ) -> str:
        """Run a PostgreSQL client program; its password goes in the environment, never on
        a command line other users can read."""
        program = shutil.which(tool)
        if program is None:
            raise BackupRefused(_NO_TOOL.format(tool=tool))
        environment = dict(os.environ)
        command = [program, *options]
        if connect:
            params = conninfo_to_dict(self._url)
            password = params.pop("password", None)
            if password is not None:
                environment["PGPASSWORD"] = str(password)
            command += ["--dbname", make_conninfo("", **params)]
        command += rest
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=environment, timeout=self._timeout_s
            )
        except subprocess.TimeoutExpired as error:
            raise BackupRefused(f"{tool} took over {self._timeout_s:g} s; stopped") from error
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()[-3:]
            raise BackupRefused(
                f"{tool} failed on {DatabaseTarget.of(self._url)} (exit {done.returncode}): "
                + " ".join(said)
            )
        return done.stdout


def _contents(db: psycopg.Connection[tuple[object, ...]]) -> CatalogueSnapshot:
    counts = db.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone()
    keys = db.execute("SELECT count(*) FROM api_keys").fetchone()
    version = db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    assert counts is not None
    assert keys is not None
    assert version is not None
    paths = frozenset(str(row[0]) for row in db.execute("SELECT DISTINCT path FROM images"))
    return CatalogueSnapshot(
        engine=PostgresCatalogueBackups.engine,
        schema_version=int(str(version[0])),
        records=int(str(counts[0])),
        images=int(str(counts[1])),
        keys=int(str(keys[0])),
        paths=paths,
    )


def _copied_versions(script: str) -> Iterator[int]:
    """The versions in a plain-SQL dump's ``COPY schema_migrations`` rows."""
    rows = False
    for line in script.splitlines():
        if line.startswith("COPY ") and "schema_migrations" in line:
            rows = True
        elif line == "\\.":
            rows = False
        elif rows and line:
            yield int(line.split("\t", 1)[0])


def _has_table(db: psycopg.Connection[tuple[object, ...]], table: str) -> bool:
    row = db.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])
