"""The PostgreSQL and S3 set-up of docs/deployment.md run as written, and its three usual
mistakes (wrong password, a role that does not own the database, no bucket) each get one clear
message.

The shell blocks run with ``bash -e``, unchanged but for what must differ here: the
placeholder address ``db.internal:5432`` becomes the test's PostgreSQL, and the values of
the ``AWS_*=...`` assignments become the test's moto endpoint and keys. The superuser
commands reach the test's server through libpq's standard PGHOST/PGPORT/PGUSER/PGPASSWORD.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from dependency_injector import providers

from captioner.adapters.catalogue.migrations import schema_steps
from captioner.config import Settings
from captioner.container import build_container
from tests.conftest import png_bytes
from tests.integration.storage.test_storage_faults import client_of
from tests.support import postgres
from tests.support.captioners import SizeCaptioner
from tests.support.live_server import free_port
from tests.support.s3 import REGION, S3Endpoint

pytestmark = pytest.mark.slow
DEPLOYMENT = Path(__file__).parents[3] / "docs" / "deployment.md"
VENV_BIN = Path(sys.executable).parent
CAPTIONER = str(VENV_BIN / "captioner")
SUPERUSER_PASSWORD = "superuser-secret"
PLACEHOLDER = "db.internal:5432"
AWS_HINT = (
    "the AWS CLI is not installed (docs/deployment.md's S3 set-up runs `aws s3 mb`): "
    "`pip install awscli` (1.29+ reads AWS_ENDPOINT_URL)"
)


def sh_blocks_under(heading: str) -> list[str]:
    """The ```sh blocks of one page section (up to the next heading of any level)."""
    section = DEPLOYMENT.read_text().split(heading, 1)[1]
    section = re.split(r"\n#{2,4} ", section, maxsplit=1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


POSTGRES_SETUP = sh_blocks_under("### The catalogue on PostgreSQL")[0]
S3_SETUP = sh_blocks_under("### Image files in S3-compatible object storage")[0]


@pytest.fixture
def database() -> Iterator[postgres.PostgresServer]:
    """A PostgreSQL that, like a real one, wants passwords over TCP (the shared test
    server trusts everyone, so a wrong password would pass there)."""
    postgres.require()
    server = postgres.PostgresServer(password=SUPERUSER_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.remove()


def shell_env(server: postgres.PostgresServer, tmp_path: Path) -> dict[str, str]:
    """What a superuser's shell on the database server has, as libpq's variables."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}:{postgres.PG_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(server.port),
        "PGUSER": "postgres",
        "PGPASSWORD": SUPERUSER_PASSWORD,
        "CAPTIONER_DATA_DIR": str(tmp_path / "data"),
        "CAPTIONER_PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1",
    }


def bash(script: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def postgres_setup(server: postgres.PostgresServer) -> str:
    assert PLACEHOLDER in POSTGRES_SETUP
    return POSTGRES_SETUP.replace(PLACEHOLDER, f"127.0.0.1:{server.port}")


def captioner(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAPTIONER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def database_url_of(setup: str) -> str:
    match = re.search(r"CAPTIONER_DATABASE_URL=(\S+)", setup)
    assert match, "the set-up names no CAPTIONER_DATABASE_URL"
    return match.group(1)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("captioner: ")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_the_readme_postgresql_setup_runs_as_written(
    database: postgres.PostgresServer, tmp_path: Path
) -> None:
    env = shell_env(database, tmp_path)

    setup = bash(postgres_setup(database), env)
    listed = captioner(
        {**env, "CAPTIONER_DATABASE_URL": database_url_of(postgres_setup(database))}, "list"
    )

    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert f"schema version {len(schema_steps('postgres'))}" in setup.stdout
    assert listed.returncode == 0, listed.stderr
    assert not (tmp_path / "data" / "captioner.sqlite3").exists()


def test_a_wrong_password_stops_every_command_with_one_permanent_message(
    database: postgres.PostgresServer, tmp_path: Path
) -> None:
    env = shell_env(database, tmp_path)
    assert bash(postgres_setup(database), env).returncode == 0
    url = database_url_of(postgres_setup(database)).replace(":secret@", ":wrong@")
    wrong = {**env, "CAPTIONER_DATABASE_URL": url}

    started = time.monotonic()
    results = [captioner(wrong, *command) for command in (["db", "upgrade"], ["list"], ["serve"])]

    for result in results:
        assert_one_clear_line(result, "wrong password", "'captioner'", "ALTER ROLE captioner")
        assert "couldn't get a connection" not in result.stderr
    assert time.monotonic() - started < 60


def test_a_role_that_does_not_own_the_database_is_told_the_command_that_fixes_it(
    database: postgres.PostgresServer, tmp_path: Path
) -> None:
    env = shell_env(database, tmp_path)
    # The mistake the docs used to show: a database the superuser owns.
    mistaken = postgres_setup(database).replace("createdb --owner captioner", "createdb")

    refused = bash(mistaken, env)
    fix = re.search(r'psql -c "[^"]*"', refused.stderr)
    assert fix, refused.stderr
    fixed = bash(fix.group(0), env)
    upgraded = captioner(
        {**env, "CAPTIONER_DATABASE_URL": database_url_of(mistaken)}, "db", "upgrade"
    )

    assert_one_clear_line(refused, "'captioner'", "permission denied for schema public")
    assert fix.group(0) == 'psql -c "ALTER DATABASE captioner OWNER TO captioner"'
    assert fixed.returncode == 0, fixed.stderr
    assert upgraded.returncode == 0, upgraded.stderr


def test_a_missing_database_is_permanent_and_names_createdb(
    database: postgres.PostgresServer, tmp_path: Path
) -> None:
    env = shell_env(database, tmp_path)
    assert bash(postgres_setup(database), env).returncode == 0
    url = database_url_of(postgres_setup(database)).rsplit("/", 1)[0] + "/photos"

    result = captioner({**env, "CAPTIONER_DATABASE_URL": url}, "db", "upgrade")

    assert_one_clear_line(result, "'photos' does not exist", "createdb --owner captioner photos")


def test_a_password_changed_under_a_running_service_is_a_permanent_503_and_stops_retrying(
    database: postgres.PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = shell_env(database, tmp_path)
    assert bash(postgres_setup(database), env).returncode == 0
    url = database_url_of(postgres_setup(database))
    container = build_container(Settings(data_dir=tmp_path / "data", database_url=url))
    container.captioner.override(providers.Object(SizeCaptioner()))
    client = client_of(container)
    assert client.get("/readyz").status_code == 200
    with psycopg.connect(database.url("captioner"), autocommit=True) as admin:
        admin.execute("ALTER ROLE captioner PASSWORD 'rotated'")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'captioner'"
        )

    ready = client.get("/readyz")
    listing = client.get("/images")
    attempts = len(pool_warnings(caplog))
    time.sleep(3)  # the pool's background retries come about once a second
    attempts_later = len(pool_warnings(caplog))
    container.shutdown_resources()

    assert ready.status_code == 503
    assert ready.get_json()["permanent"] is True, ready.get_json()
    assert "wrong password" in ready.get_json()["reason"]
    assert "Retry-After" not in ready.headers
    assert listing.status_code == 503
    assert "wrong password" in listing.get_json()["error"]
    assert "Retry-After" not in listing.headers
    assert attempts_later == attempts


def pool_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "psycopg.pool" and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Endpoint]:
    """This module's own moto server: the page's bucket name is fixed (my-bucket)."""
    endpoint = S3Endpoint()
    endpoint.start()
    yield endpoint
    endpoint.stop()


def aws_cli() -> None:
    if shutil.which("aws") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(AWS_HINT)
        pytest.skip(AWS_HINT)


def s3_env(endpoint: S3Endpoint, tmp_path: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "CAPTIONER_"))
    }
    return {
        **env,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "CAPTIONER_HOST": "127.0.0.1",
        "CAPTIONER_PORT": str(free_port()),
        "CAPTIONER_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
    }


def s3_setup(endpoint: S3Endpoint) -> str:
    """The page's block with its AWS_* values pointing at moto (the names stay)."""
    values = {
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": REGION,
    }
    assigned = re.findall(r"\b(AWS_\w+)=\S+", S3_SETUP)
    assert sorted(assigned) == sorted(values), assigned
    return re.sub(r"\b(AWS_\w+)=\S+", lambda m: f"{m.group(1)}={values[m.group(1)]}", S3_SETUP)


def test_the_readme_s3_setup_runs_as_written_and_serves_from_the_bucket(
    moto: S3Endpoint, tmp_path: Path, tiny_blip_dir: Path
) -> None:
    aws_cli()
    env = {**s3_env(moto, tmp_path), "CAPTIONER_MODEL": str(tiny_blip_dir)}
    url = f"http://127.0.0.1:{env['CAPTIONER_PORT']}"
    log = tmp_path / "setup.log"
    with log.open("wb") as out:
        # Its last line is `captioner serve`: the block runs until the test stops it.
        setup = subprocess.Popen(
            ["bash", "-e", "-c", s3_setup(moto)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = wait_ready(url, setup, log)
        uploaded = requests.post(
            f"{url}/upload", files={"image": ("a.png", png_bytes((9, 99, 199)))}, timeout=60
        )
        listed = subprocess.run(
            ["aws", "s3", "ls", "--recursive", "s3://my-bucket/captioner/"],
            env={**env, **aws_values(moto)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.killpg(setup.pid, signal.SIGTERM)
        setup.wait(timeout=60)

    assert ready.status_code == 200, log.read_text()
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["sha256"] in listed.stdout
    assert not (tmp_path / "data" / "uploads").exists()


def aws_values(endpoint: S3Endpoint) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": REGION,
    }


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> requests.Response:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            answer = requests.get(f"{url}/readyz", timeout=2)
            if answer.status_code == 200:
                return answer
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"not ready in time:\n{log.read_text()}")


def test_a_missing_bucket_is_a_permanent_503_that_says_how_to_create_it(
    moto: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_cli()
    for name, value in aws_values(moto).items():
        monkeypatch.setenv(name, value)  # boto3 reads only the environment, as a user's does
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    store_url = "s3://never-created/captioner"
    container = build_container(Settings(data_dir=tmp_path / "data", store_url=store_url))
    container.captioner.override(providers.Object(SizeCaptioner()))
    client = client_of(container)

    ready = client.get("/readyz")
    upload = client.post(
        "/upload",
        data={"image": (io.BytesIO(png_bytes((1, 2, 3))), "a.png")},
        content_type="multipart/form-data",
    )
    check = captioner(
        {**s3_env(moto, tmp_path), **aws_values(moto), "CAPTIONER_STORE_URL": store_url}, "check"
    )
    fix = re.search(r"aws [^()]*? s3 mb s3://\S+", ready.get_json()["reason"])
    assert fix, ready.get_json()["reason"]
    created = bash(fix.group(0), {**s3_env(moto, tmp_path), **aws_values(moto)})
    ready_after = client.get("/readyz")
    container.shutdown_resources()

    reason = ready.get_json()["reason"]
    assert ready.status_code == 503
    assert ready.get_json()["permanent"] is True
    assert "Retry-After" not in ready.headers
    assert "'never-created' does not exist" in reason
    assert moto.url in reason
    assert upload.status_code == 503
    assert "'never-created' does not exist" in upload.get_json()["error"]
    assert "Retry-After" not in upload.headers
    assert_one_clear_line(check, "'never-created' does not exist", "s3 mb s3://never-created")
    assert created.returncode == 0, created.stderr
    assert ready_after.status_code == 200, ready_after.get_json()
