"""`captioner bulk` on a real local Ray (2 CPUs, one per module), real PostgreSQL and moto
S3: one model run per distinct image across reruns, a lost actor and a concurrent upload."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from captioner.config import Settings
from captioner.domain.model import ImageUpload
from captioner.entrypoints.cli import main
from captioner.entrypoints.http import create_app
from tests.support.bulk import (
    RUNS_FILE,
    counted_runs,
    counting_containers,
    distinct_png,
    image_tree,
    require_ray,
)
from tests.support.s3 import S3Endpoint, new_bucket, use_endpoint

pytestmark = pytest.mark.slow  # starts Ray's processes: ~5 s once per module, actors per run

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Cluster:
    runs: Path
    endpoint: S3Endpoint


@pytest.fixture(scope="module")
def cluster(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One Ray for the module; its workers get the S3 endpoint's settings, these sources on
    their path (the counting captioner's module) and the file where model runs are counted."""
    require_ray()
    import ray

    runs = tmp_path_factory.mktemp("bulk-runs") / "runs"
    with pytest.MonkeyPatch.context() as patch:
        use_endpoint(patch, s3_endpoint)
        patch.setenv(RUNS_FILE, str(runs))
        names = (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_SHARED_CREDENTIALS_FILE",
            RUNS_FILE,
        )
        env = {name: os.environ[name] for name in names}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
        try:
            yield Cluster(runs, s3_endpoint)
        finally:
            ray.shutdown()


@pytest.fixture
def settings(
    cluster: Cluster, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings of a run, as a user gives them: the environment (the CLI reads it)."""
    for suffix in ("", ".died", ".die-after"):
        cluster.runs.with_suffix(suffix).unlink(missing_ok=True)
    store = new_bucket(cluster.endpoint)
    # A short lease: a claim left by a killed actor is taken over within seconds.
    use_endpoint(monkeypatch, cluster.endpoint)
    for name, value in {
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": postgres_url,
        "STORE_URL": store.store_url,
        "MODEL": "counting-a",
        "CLAIM_LEASE_S": "2",
        "AUTH": "off",
    }.items():
        monkeypatch.setenv(f"CAPTIONER_{name}", value)
    return Settings.load()


def records(settings: Settings) -> list[str]:
    from captioner.container import opened

    with opened(counting_containers(settings, False)) as container:
        return [record.sha256 for record in container.service().export(model=settings.model)]


@dataclass
class Library:
    """The issue's collection: 300 images in a folder tree and 100 in a bucket, 40 of them
    captioned already, and the bulk command over both."""

    folder: list[Path]
    command: list[str]


@pytest.fixture
def library(cluster: Cluster, settings: Settings, tmp_path: Path) -> Library:
    folder = image_tree(tmp_path / "photos", range(300))
    bucket = new_bucket(cluster.endpoint)
    from captioner.adapters.storage.s3 import make_s3_client

    client = make_s3_client()
    for number in range(300, 400):
        key = f"incoming/{number // 50}/{number}.png"
        client.put_object(Bucket=bucket.name, Key=key, Body=distinct_png(number))
    from captioner.container import opened

    with opened(counting_containers(settings, True)) as container:
        service = container.service()
        for number in [*range(0, 300, 10), *range(300, 400, 10)]:  # 40 known already
            service.describe(ImageUpload(io.BytesIO(distinct_png(number)), f"{number}.png"))
    cluster.runs.unlink()
    command = ["bulk", str(tmp_path / "photos"), f"s3://{bucket.name}/incoming/", "--engine", "ray"]
    return Library(folder, command)


def test_bulk_runs_the_model_once_per_image_the_catalogue_does_not_know(
    cluster: Cluster, settings: Settings, library: Library, tmp_path: Path
) -> None:
    folder = library.folder
    command = [*library.command, "--parquet", str(tmp_path / "out")]

    assert main(command, containers=counting_containers) == 0

    assert counted_runs(cluster.runs) == 360
    stored = records(settings)
    assert len(stored) == 400
    assert len(set(stored)) == 400
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 400
    assert set(table.column("path").to_pylist()) >= {str(path) for path in folder}
    assert all(table.column("caption").to_pylist())
    assert all('"generation"' in value for value in table.column("provenance").to_pylist())

    assert main(command, containers=counting_containers) == 0  # the same command again
    assert counted_runs(cluster.runs) == 360
    assert len(records(settings)) == 400


def test_an_actor_killed_mid_run_is_retried_without_a_second_run_or_record(
    cluster: Cluster, settings: Settings, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor dies in the middle of a batch, in a model run, holding that image's claim:
    Ray restarts it and retries the batch, whose finished images are answered from the
    catalogue and whose interrupted one is taken over once its lease lapses.

    One image at a time in the actor: a caption finished but not yet stored when a process
    dies is lost with it and must be made again; this test kills with none of those.
    """
    monkeypatch.setenv("CAPTIONER_MAX_BATCH", "1")
    cluster.runs.with_suffix(".die-after").write_text("150")

    assert main(library.command, containers=counting_containers) == 0

    assert cluster.runs.with_suffix(".died").exists()  # an actor did die mid-run
    assert counted_runs(cluster.runs) == 360
    stored = records(settings)
    assert len(stored) == 400
    assert len(set(stored)) == 400
    assert unclaimed(settings, stored) == 400  # the dead actor's claims were taken over too


def unclaimed(settings: Settings, sha256s: list[str]) -> int:
    """How many of these images' keys nobody holds a claim on now."""
    from captioner.container import opened
    from captioner.domain.model import CaptionKey

    with opened(counting_containers(settings, False)) as container:
        keys = [CaptionKey(sha, settings.model, settings.prompt) for sha in sha256s]
        return len(container.repository().claim_many(keys, 0.0))


def test_an_upload_of_the_same_images_during_the_run_adds_no_model_run(
    cluster: Cluster, settings: Settings, library: Library
) -> None:
    paths = library.folder
    app = create_app(counting_containers(settings, True))
    answers: list[int] = []

    def upload_once_captioning_started() -> None:
        deadline = time.monotonic() + 60
        while counted_runs(cluster.runs) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        with app.test_client() as http:
            for path in paths[-10:]:
                response = http.post(
                    "/upload",
                    data={"image": (io.BytesIO(path.read_bytes()), path.name)},
                    content_type="multipart/form-data",
                )
                answers.append(response.status_code)

    uploads = threading.Thread(target=upload_once_captioning_started)
    uploads.start()
    try:
        code = main(library.command, containers=counting_containers)
    finally:
        uploads.join()

    assert code == 0
    assert answers == [200] * 10
    assert counted_runs(cluster.runs) == 360
    stored = records(settings)
    assert len(stored) == 400
    assert len(set(stored)) == 400
