"""docs/deployment.md's "Growing" steps run as written: a library served on SQLite and disk
moves to PostgreSQL and S3 (moto), and two replicas serve it as it was, captioning nothing.

Each numbered step's ```sh block runs with ``bash -e``, in one shell session as the page
says (the environment a step exports is there in the next), unchanged but for what must
differ here: ``db.internal:5432`` becomes the test's PostgreSQL, the ``AWS_*=...`` values the
moto endpoint and keys, and the replicas' ports free ones. Step 1's ``make run`` is what it
runs, ``captioner serve`` in the project's venv, started on the test's model; step 2 is
prose (the database and the bucket are made here as the sections it links to make them).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import requests

from tests.conftest import png_bytes
from tests.integration.end_to_end.test_readme_replicas import aws_values, wait_ready
from tests.support import postgres
from tests.support.live_server import free_port
from tests.support.prometheus import sample
from tests.support.s3 import REGION, S3Endpoint

pytestmark = pytest.mark.slow
DEPLOYMENT = Path(__file__).parents[3] / "docs" / "deployment.md"
VENV_BIN = Path(sys.executable).parent
CAPTIONER = str(VENV_BIN / "captioner")
IMAGES = 50
EDITED = range(0, IMAGES, 10)


def growing_steps() -> list[str]:
    """The ```sh blocks of the numbered steps, unindented, in order."""
    section = DEPLOYMENT.read_text().split("## Growing: from `make run` to replicas", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    blocks = re.findall(r"\n( *)```sh\n(.*?)\n *```", section, re.S)
    return [
        "\n".join(line.removeprefix(indent) for line in block.splitlines())
        for indent, block in blocks
    ]


@pytest.fixture
def database() -> Iterator[str]:
    """The role and database of the PostgreSQL section, on a throwaway server: its URL."""
    postgres.require()
    server = postgres.PostgresServer()
    server.start()
    try:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute("CREATE ROLE captioner LOGIN PASSWORD 'secret'")
            admin.execute("CREATE DATABASE captioner OWNER captioner")
        yield f"127.0.0.1:{server.port}"
    finally:
        server.remove()


@pytest.fixture
def moto() -> Iterator[S3Endpoint]:
    endpoint = S3Endpoint()
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def made_here(step: str, database: str, endpoint: S3Endpoint, ports: list[int]) -> str:
    """The step with the addresses, keys and ports that must differ in a test."""
    values = aws_values(endpoint)
    step = step.replace("db.internal:5432", database)
    step = re.sub(r"\b(AWS_\w+)=\S+", lambda m: f"{m.group(1)}={values[m.group(1)]}", step)
    for documented, free in zip(("5001", "5002"), ports, strict=True):
        step = step.replace(f"--port {documented}", f"--port {free}")
    return step


class Shell:
    """One shell session: each step runs in ``bash -e`` and hands its environment on."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self._saved = cwd / "shell.env"

    def run(self, step: str) -> subprocess.CompletedProcess[str]:
        script = f"{step}\nenv -0 > {self._saved}\n"
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        print(f"step took {time.monotonic() - started:.1f} s:\n{done.stdout}{done.stderr}")
        assert done.returncode == 0, done.stdout + done.stderr
        entries = self._saved.read_text().split("\0")
        self.env = dict(entry.split("=", 1) for entry in entries if "=" in entry)
        return done

    def start(self, step: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["bash", "-e", "-c", step],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


def library_of(url: str, key: str) -> dict[str, Any]:
    """What a client sees: the listing, every image's captions, and its file's SHA-256."""
    auth = {"Authorization": f"Bearer {key}"}
    listing = requests.get(f"{url}/images", params={"limit": 1000}, headers=auth, timeout=30)
    assert listing.status_code == 200, listing.text
    records = listing.json()
    captions = {
        r["id"]: requests.get(f"{url}/images/{r['id']}/captions", headers=auth, timeout=30).json()
        for r in records
    }
    files = {
        r["id"]: hashlib.sha256(
            requests.get(f"{url}/images/{r['id']}/file", headers=auth, timeout=30).content
        ).hexdigest()
        for r in records
    }
    return {"records": records, "captions": captions, "files": files}


def test_the_growing_steps_move_a_library_to_replicas_on_postgresql_and_s3(
    database: str, moto: S3Endpoint, tmp_path: Path, tiny_blip_dir: Path
) -> None:
    steps = growing_steps()
    assert len(steps) == 4, steps
    assert steps[0].split("#")[0].strip() == "make run", steps
    source_port, ports = free_port(), [free_port(), free_port()]
    values = aws_values(moto)
    boto3.client(
        "s3",
        endpoint_url=values["AWS_ENDPOINT_URL"],
        aws_access_key_id=values["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).create_bucket(Bucket="my-bucket")
    shell = Shell(
        tmp_path,
        {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAPTIONER_"))},
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
            "CAPTIONER_MODEL": str(tiny_blip_dir),
            "CAPTIONER_MAX_NEW_TOKENS": "5",  # the tiny model's words are noise: few will do
            "CAPTIONER_HOST": "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        },
    )
    key = shell.run("captioner keys create --scope admin --name admin").stdout.split()[-1]
    auth = {"Authorization": f"Bearer {key}"}

    # 1. make run: the library as it is, served by one process on ./data
    source_url = f"http://127.0.0.1:{source_port}"
    source_log = tmp_path / "source.log"
    source = shell.start(f"exec {CAPTIONER} serve --port {source_port}", source_log)
    try:
        wait_ready(source_url, source, source_log)
        started = time.monotonic()
        for n in range(IMAGES):
            answer = requests.post(
                f"{source_url}/upload",
                files={"image": (f"photo{n}.png", png_bytes((n, 2 * n, 255 - n)))},
                headers=auth,
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
            if n in EDITED:
                edited = requests.patch(
                    f"{source_url}/images/{answer.json()['id']}",
                    json={"description": f"a person's words for photo {n}"},
                    headers=auth,
                    timeout=30,
                )
                assert edited.status_code == 200, edited.text
        print(f"{IMAGES} images uploaded and captioned in {time.monotonic() - started:.1f} s")
        for n in range(3):  # a few thumbnails, made on view
            requests.get(f"{source_url}/images/{n + 1}/thumbnail", headers=auth, timeout=30)
        # 3. the copies, beside the running server
        shell.run(made_here(steps[1], database, moto, ports))
        before = library_of(source_url, key)
    finally:
        stop(source)  # 4. stop the server, then copy again
    again = shell.run(made_here(steps[2], database, moto, ports))

    # 5. the replicas
    replicas_log = tmp_path / "replicas.log"
    replicas = shell.start(made_here(steps[3], database, moto, ports), replicas_log)
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            wait_ready(url, replicas, replicas_log)
        seen = [library_of(url, key) for url in urls]
        uploads_again = [
            requests.post(
                f"{urls[n % 2]}/upload",
                files={"image": (f"photo{n}.png", png_bytes((n, 2 * n, 255 - n)))},
                headers=auth,
                timeout=120,
            ).json()
            for n in range(IMAGES)
        ]
        runs = [
            sample(
                requests.get(f"{url}/metrics", headers=auth, timeout=10).text,
                "captioner_captions_generated_total",
            )
            for url in urls
        ]
    finally:
        stop(replicas)

    assert len(before["records"]) == IMAGES
    assert sum(r["source"] == "person" for r in before["records"]) == len(EDITED)
    assert seen == [before, before]
    assert all(upload["duplicate"] for upload in uploads_again), uploads_again
    assert runs == [0, 0]
    records = IMAGES + len(EDITED)
    checked = rf"^checked \d+ files, {records} records: no problems$"
    assert re.search(checked, replicas_log.read_text(), re.M), replicas_log.read_text()
    assert "captioner: " not in again.stderr
    assert re.search(r"^images\t\d+\t0\t0\t0\t\d+\t[0-9a-f]{64}\tyes$", again.stdout, re.M)
    assert "0 files copied" in again.stdout
    assert f"{IMAGES} already there" in again.stdout
    assert "thumbnails made" in again.stdout
