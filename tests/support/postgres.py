"""A throwaway PostgreSQL 15 for tests: initdb in a temp dir, a loopback port, removed after."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import suppress
from pathlib import Path

from tests.integration.live_server import free_port

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
    from running servers and give it back on the same port.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self._root = Path(tempfile.mkdtemp(prefix="captioner-pg-"))
        self._data = self._root / "data"
        self._log = self._root / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self._root, "postgres", "postgres")
        self._run(
            PG_BIN / "initdb",
            "-D",
            str(self._data),
            "-U",
            "postgres",
            "--auth=trust",
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
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

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
