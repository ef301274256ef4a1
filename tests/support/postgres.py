"""A throwaway PostgreSQL 15 for tests: initdb in a temp dir, a loopback port, removed after."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import suppress
from pathlib import Path

from tests.support.live_server import free_port

PG_BIN = Path(os.environ.get("CAPTIONER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
INSTALL_HINT = (
    "PostgreSQL 15 is not installed: `apt-get install postgresql` "
    f"(tests need {PG_BIN}/initdb); .ci/run installs it"
)


def available() -> bool:
    return (PG_BIN / "initdb").is_file() and (PG_BIN / "pg_ctl").is_file()


class PostgresServer:
    """One postgres cluster owned by the ``postgres`` user (initdb refuses root).

    ``stop()`` and ``start()`` may be called again during a test, to take the database away
    from running servers and give it back on the same port. With a ``password`` connections
    over TCP need one (scram-sha-256, as on a real server; the superuser's is ``password``),
    else every connection is trusted.
    """

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self._root = Path(tempfile.mkdtemp(prefix="captioner-pg-"))
        self._data = self._root / "data"
        self._log = self._root / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self._root, "postgres", "postgres")
        auth = ["--auth=trust"]
        if password is not None:
            secret = self._root / "superuser-password"
            secret.write_text(password)
            if self._as_root:
                shutil.chown(secret, "postgres", "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={secret}"]
        self._run(
            PG_BIN / "initdb",
            "-D",
            str(self._data),
            "-U",
            "postgres",
            *auth,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self._root}'",
            "fsync": "off",  # a test cluster: speed over durability across power cuts
            "max_connections": "200",
        }
        conf = self._data / "postgresql.auto.conf"
        conf.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
        if self._as_root:
            shutil.chown(conf, "postgres", "postgres")

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        login = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", str(self._data), "-l", str(self._log), "-w", "start")

    def stop(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def remove(self) -> None:
        with suppress(subprocess.SubprocessError, OSError):
            self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def _run(self, *command: object) -> None:
        args = [str(part) for part in command]
        if self._as_root:
            args = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, cwd=self._root, timeout=120)


def require() -> None:
    """Skip the calling test where PostgreSQL is not installed; under CI=true, fail it."""
    import pytest

    if not available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
