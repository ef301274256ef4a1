"""PostgreSQL's faults in words: who connects to what, and what a refused connection needs."""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict

from captioner.domain.errors import CatalogueUnavailable


@dataclass(frozen=True)
class DatabaseTarget:
    """Who connects to what, from a database URL (never the password), for messages."""

    user: str
    database: str
    server: str

    @classmethod
    def of(cls, url: str) -> DatabaseTarget:
        # libpq's own defaults where the URL leaves a part out: PG* variables, then the OS user.
        params = conninfo_to_dict(url)
        user = str(params.get("user") or os.environ.get("PGUSER") or getpass.getuser())
        database = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
        host = str(params.get("host") or os.environ.get("PGHOST") or "the local socket")
        port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
        return cls(user, database, f"{host}:{port}")

    def __str__(self) -> str:
        return f"{self.database!r} at {self.server} (user {self.user!r})"


# What a refused connection's FATAL line says (libpq gives no SQLSTATE for a connection that
# never opened). An English-speaking server's wording; others fall back to "unreachable".
_WRONG_PASSWORD = re.compile(r"password authentication failed|SCRAM authentication|no password")
_NO_ROLE = re.compile(r'role "[^"]*" does not exist')
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist')
_NO_HBA_ENTRY = re.compile(r"no pg_hba\.conf entry")
_NO_CONNECT = re.compile(r"permission denied for database|not permitted to log in")


def connection_fault(error: psycopg.Error, target: DatabaseTarget) -> CatalogueUnavailable:
    """What a failed connection means: permanent (a setting or a grant must change, with the
    command that does it) or transient (the server is down or unreachable: retry)."""
    text = str(error)
    user, database, server = target.user, target.database, target.server
    sqlstate = error.sqlstate or ""
    if sqlstate == "28P01" or _WRONG_PASSWORD.search(text):
        return CatalogueUnavailable(
            f"database refused user {user!r} at {server}: wrong password (or no such role). "
            "Put the role's password in database_url, or set it as a PostgreSQL superuser: "
            f"psql -c \"ALTER ROLE {user} LOGIN PASSWORD '...'\" (a missing role: "
            f"CREATE ROLE {user} LOGIN PASSWORD '...')",
            retry_after_s=None,
        )
    if _NO_ROLE.search(text):
        return CatalogueUnavailable(
            f"database at {server} has no role {user!r}. Create it as a PostgreSQL superuser: "
            f"psql -c \"CREATE ROLE {user} LOGIN PASSWORD '...'\"",
            retry_after_s=None,
        )
    if sqlstate == "3D000" or _NO_DATABASE.search(text):
        return CatalogueUnavailable(
            f"database {database!r} does not exist at {server}. Create it, owned by "
            f"captioner's user, as a PostgreSQL superuser: createdb --owner {user} {database}",
            retry_after_s=None,
        )
    if sqlstate == "28000" or _NO_HBA_ENTRY.search(text):
        return CatalogueUnavailable(
            f"database at {server} refuses user {user!r} on database {database!r} from this "
            f"machine ({_server_says(text)}). Allow it in the server's pg_hba.conf "
            "(a `host` line for this user and database) and reload PostgreSQL",
            retry_after_s=None,
        )
    if sqlstate == "42501" or _NO_CONNECT.search(text):
        return CatalogueUnavailable(
            f"user {user!r} may not connect to database {database!r} at {server} "
            f"({_server_says(text)}). As a PostgreSQL superuser: "
            f'psql -c "ALTER ROLE {user} LOGIN; GRANT CONNECT ON DATABASE {database} TO {user}"',
            retry_after_s=None,
        )
    return CatalogueUnavailable(
        f"database unreachable: {server} ({_server_says(text)}). Is PostgreSQL running there "
        "and reachable from this machine? Requests succeed again once it is"
    )


def privilege_fault(error: psycopg.Error, target: DatabaseTarget) -> CatalogueUnavailable:
    """A statement refused for want of a privilege: permanent until someone grants it."""
    user, database = target.user, target.database
    return CatalogueUnavailable(
        f"user {user!r} lacks a privilege in database {target.database!r} at {target.server} "
        f"({first_line(error)}). captioner creates and changes its own tables, so its user "
        f"should own the database; as a PostgreSQL superuser: "
        f'psql -c "ALTER DATABASE {database} OWNER TO {user}" '
        f"(or GRANT the privilege named above to {user})",
        retry_after_s=None,
    )


def _server_says(text: str) -> str:
    """The cause in a libpq message, without its 'connection to server at ... failed:'."""
    line = (text.strip().splitlines() or ["no reason given"])[0]
    line = re.sub(r"^connection failed: ", "", line)
    line = re.sub(r'^connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: ', "", line)
    return re.sub(r"^FATAL:\s+", "", line)


def first_line(error: BaseException) -> str:
    """The first line of a driver's message (psycopg's run on with hints and context)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
