"""The Containerfile built on a Debian base and run as compose.yaml runs it: the API without a
model and one worker, with compose's commands and environment, against a real PostgreSQL and
an S3 endpoint on loopback, uploading, captioning and deduplicating over HTTP.

No container runtime can start containers here, so buildah stands in: `buildah bud` builds,
`buildah run --isolation chroot` runs each service's command in its own working container on
the host's network (compose's `db` and `s3` are then loopback ports). `make test-image`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg
import pytest

from tests.support import compose, container_image, deployed
from tests.support.container_image import BuiltImage, ImageProcess
from tests.support.live_server import free_port
from tests.support.postgres import PostgresServer
from tests.support.postgres import require as require_postgres
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.slow, pytest.mark.image, pytest.mark.timeout(2400)]

UID = 10001  # the image's captioner user (the Containerfile's UID build argument)
MODEL_IN_IMAGE = "/models/tiny-blip"
ADMIN_KEY = "image-test-admin-key-" + "fedcba9876543210" * 2
# What a .env gives compose (the model is the mounted tiny one, the hub never asked).
VARIABLES = {
    "POSTGRES_PASSWORD": "image-test-db-password",
    "S3_ACCESS_KEY": "image-test-access-key",
    "S3_SECRET_KEY": "image-test-secret-key",
    "CAPTIONER_MODEL": MODEL_IN_IMAGE,
    "HF_HUB_OFFLINE": "1",
}


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Iterator[BuiltImage]:
    """The image, built once for the module on the cached Debian base; removed afterwards."""
    container_image.require()
    base = container_image.debian_base()
    built = container_image.build_image(base.name, "localhost/captioner-test:latest")
    made = f"made in {base.made_s:.0f} s" if base.made_s else "cached"
    report(request, f"image: base {made}, build {built.build_s:.0f} s, {built.size_bytes} bytes")
    try:
        yield built
    finally:
        built.remove()


def report(request: pytest.FixtureRequest, line: str) -> None:
    """``line`` on the terminal, past output capturing (the figures docs/deployment.md gives)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")


@dataclass(frozen=True)
class Services:
    """What compose's `db` and `s3` services stand for: their loopback addresses."""

    database: PostgresServer
    s3: S3Endpoint

    def on_loopback(self, environment: dict[str, str]) -> dict[str, str]:
        """``environment`` with compose's service names for db and s3 swapped for loopback."""
        swaps = {
            "CAPTIONER_DATABASE_URL": ("@db:5432/", f"@127.0.0.1:{self.database.port}/"),
            "AWS_ENDPOINT_URL": ("http://s3:8333", self.s3.url),
        }
        changed = dict(environment)
        for name, (service, loopback) in swaps.items():
            assert service in changed[name], (name, changed[name])
            changed[name] = changed[name].replace(service, loopback)
        return changed


@pytest.fixture(scope="module")
def services(s3_endpoint: S3Endpoint) -> Iterator[Services]:
    """PostgreSQL with compose's role and database, and the bucket compose's s3 service makes."""
    require_postgres()
    db = compose.load()["services"]["db"]["environment"]
    server = PostgresServer(password="superuser-password")
    server.start()
    try:
        with psycopg.connect(server.admin_url, autocommit=True) as connection:
            connection.execute(
                f"CREATE ROLE {db['POSTGRES_USER']} LOGIN PASSWORD "
                f"'{VARIABLES['POSTGRES_PASSWORD']}'"
            )
            connection.execute(f"CREATE DATABASE {db['POSTGRES_DB']} OWNER {db['POSTGRES_USER']}")
        bucket = compose.load()["services"]["s3"]["environment"]["S3_BUCKET"]
        s3_client(s3_endpoint).create_bucket(Bucket=bucket)
        yield Services(server, s3_endpoint)
    finally:
        server.remove()


def s3_client(endpoint: S3Endpoint):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=VARIABLES["S3_ACCESS_KEY"],
        aws_secret_access_key=VARIABLES["S3_SECRET_KEY"],
        region_name="us-east-1",
    )


@dataclass
class Deployment:
    api: ImageProcess
    worker: ImageProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def readable_by_everyone(source: Path, target: Path) -> Path:
    """A copy of ``source`` the image's user can read (test temp dirs are private to root)."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="module")
def deployment(
    image: BuiltImage,
    services: Services,
    tiny_blip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """compose's api and worker services, each from its own container of the image."""
    root = tmp_path_factory.mktemp("image-deployment")
    model = readable_by_everyone(tiny_blip_dir, root / "model")
    data = root / "data"
    data.mkdir()
    shutil.chown(data, UID)
    key_file = root / "admin_key"
    key_file.write_text(ADMIN_KEY + "\n")
    key_file.chmod(0o400)
    shutil.chown(key_file, UID)
    port = free_port()
    # Beyond compose's environment: the port (every container shares the host's network
    # here), and no background compile (CPU time a test need not spend).
    here = {"CAPTIONER_PORT": str(port), "CAPTIONER_COMPILE": "off"}
    model_mount = f"{model}:{MODEL_IN_IMAGE}:ro"
    api = ImageProcess(
        image.name,
        compose.service_command("api"),
        {**services.on_loopback(compose.service_environment("api", VARIABLES)), **here},
        [f"{data}:/data", model_mount, f"{key_file}:/run/secrets/admin_key:ro"],
        root / "api.log",
    )
    worker = ImageProcess(
        image.name,
        compose.service_command("worker"),
        {**services.on_loopback(compose.service_environment("worker", VARIABLES)), **here},
        [model_mount],
        root / "worker.log",
    )
    try:
        worker.start()
        api.start()
        made = Deployment(api, worker, port)
        deployed.wait_until_ready(made.url, lambda: api.alive() and worker.alive(), 300)
        yield made
    finally:
        api.stop()
        worker.stop()
        logs = api.log.read_text(errors="replace") + worker.log.read_text(errors="replace")
        assert ADMIN_KEY not in logs, "the admin key reached a log"


def test_the_image_runs_as_a_user_with_data_volume_readyz_healthcheck_and_serve_by_default(
    image: BuiltImage,
) -> None:
    config = image.config()

    assert config["Cmd"] == ["captioner", "serve", "--host", "0.0.0.0"]
    assert config["Cmd"] == compose.service_command("api")
    assert config["User"] == "captioner"
    assert "/data" in config["Volumes"]  # type: ignore[operator]
    assert "/readyz" in str(config["Healthcheck"])
    assert image.run_once("id", "-u").strip() == str(UID)


def test_the_machines_package_indexes_reach_only_the_build_never_the_image(
    image: BuiltImage,
) -> None:
    settings = container_image.local_pip_settings()
    environment = image.config()["Env"]
    kept = str(environment) + image.history()

    assert [name for name in environment if name.startswith("PIP_")] == []  # type: ignore[attr-defined]
    for value in settings.values():
        assert value not in kept


def test_compose_services_in_the_image_caption_uploads_once_and_answer_repeats(
    deployment: Deployment, services: Services
) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    unauthorised = httpx.post(f"{deployment.url}/upload", files={"image": ("a.png", b"x")})
    deployed.serves_captions_and_repeats(deployment.url, headers)
    queue = httpx.get(f"{deployment.url}/queue", headers=headers, timeout=30).json()
    bucket = compose.load()["services"]["s3"]["environment"]["S3_BUCKET"]
    stored = s3_client(services.s3).list_objects_v2(Bucket=bucket).get("Contents", [])

    assert unauthorised.status_code == 401
    assert queue["workers_alive"] == 1  # the caption came from compose's worker
    assert [item["Key"] for item in stored if not item["Key"].endswith(".webp")]
    assert all(item["Key"].startswith("images/") for item in stored)


def test_the_images_healthcheck_passes_on_a_ready_api_and_fails_where_none_listens(
    image: BuiltImage, deployment: Deployment
) -> None:
    check = str(image.config()["Healthcheck"]["Test"][1])  # type: ignore[index]
    healthy = deployment.api.exec("sh", "-c", check, env={"CAPTIONER_PORT": str(deployment.port)})
    nowhere = deployment.api.exec("sh", "-c", check, env={"CAPTIONER_PORT": str(free_port())})

    assert healthy == 0
    assert nowhere != 0
