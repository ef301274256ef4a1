"""`captioner backup` and `restore`: a backup taken under load holds every upload answered
before it, a round trip keeps everything, and a damaged or partial backup is refused whole."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from dependency_injector import providers
from PIL import Image

from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.entrypoints.cli import main
from captioner.entrypoints.http import create_app
from tests.support.data_dir import DATABASE, rows
from tests.support.fakes import FakeBatchModel, FakeImageDecoder, fake_image
from tests.support.live_server import serving
from tests.support.postgres import PostgresServer
from tests.support.s3 import S3Bucket, new_bucket

UPLOADERS = 8


class Cli:
    """`captioner` in-process, with a fake model and decoder; (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    @staticmethod
    def containers(settings: Settings, load_model: bool) -> Container:
        container = build_container(settings, load_model)
        container.model.override(providers.Factory(FakeBatchModel, model_name=settings.model))
        container.image_decoder.override(providers.Object(FakeImageDecoder()))
        return container

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main(list(argv), containers=self.containers)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def make_library(cli: Cli, data_dir: Path, photos: Path) -> None:
    """Three model captions, a person's edit, a person's caption from a sidecar, two keys."""
    photos.mkdir(exist_ok=True)
    for name in ("cat", "dog", "owl"):
        (photos / f"{name}.png").write_bytes(fake_image(name))
    where = ("--data-dir", str(data_dir))
    assert cli("caption", *where, str(photos))[0] == 0
    assert cli("edit", *where, "2", "a dog asleep on a rug")[0] == 0
    sidecars = photos / "more"
    sidecars.mkdir()
    (sidecars / "bee.png").write_bytes(fake_image("bee"))
    (sidecars / "bee.txt").write_text("a bee on a flower\n")
    assert cli("import", *where, str(sidecars))[0] == 0
    for name, scope in (("reader", "read"), ("boss", "admin")):
        assert cli("keys", "create", *where, "--scope", scope, "--name", name)[0] == 0


def table(data_dir: Path, name: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{data_dir / DATABASE}?mode=ro", uri=True) as db:
        return db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def backup(cli: Cli, tmp_path: Path) -> Path:
    """A finished backup of a small library."""
    library = tmp_path / "library"
    make_library(cli, library, tmp_path / "photos")
    destination = tmp_path / "backup"
    code, out, err = cli("backup", "--data-dir", str(library), str(destination))
    assert code == 0, err
    assert "5 record(s) of 4 image(s), 2 key(s), 4 file(s)" in out
    return destination


def test_a_round_trip_keeps_ids_captions_person_edits_and_keys(
    cli: Cli, tmp_path: Path, backup: Path
) -> None:
    library, target = tmp_path / "library", tmp_path / "restored"

    code, out, err = cli("restore", "--data-dir", str(target), str(backup))

    assert code == 0, err
    assert out.splitlines()[-1] == "checked 4 files, 5 records: no problems"
    for name in ("images", "api_keys", "schema_migrations"):
        assert table(target, name) == table(library, name)
    captions = [row[3] for row in rows(target)]
    assert "a dog asleep on a rug" in captions  # the person's edit
    assert "a bee on a flower" in captions  # and the caption read from a sidecar
    assert files_under(target / "uploads") == files_under(library / "uploads")
    listed = cli("keys", "list", "--data-dir", str(target), "--json")[1]
    assert [json.loads(line)["name"] for line in listed.splitlines()] == ["reader", "boss"]


def test_the_manifest_names_every_file_with_its_sha256_and_the_counts(backup: Path) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())

    assert manifest["format"] == "captioner-backup"
    assert manifest["engine"] == "sqlite"
    assert manifest["schema_version"] >= 8
    assert manifest["counts"] == {
        "records": 5,
        "images": 4,
        "keys": 2,
        "files": 4,
        "file_bytes": sum(file["bytes"] for file in manifest["files"]),
    }
    for file in [manifest["catalogue"], *manifest["files"]]:
        assert (backup / file["path"]).stat().st_size == file["bytes"]
    # The copy is one self-contained file: no -wal beside it.
    assert sorted(path.name for path in backup.iterdir()) == [
        "catalogue.sqlite3",
        "manifest.json",
        "uploads",
    ]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def first_image(backup: Path) -> Path:
    return sorted((backup / "uploads").rglob("*.png"))[0]


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def change_catalogue_and_its_manifest(backup: Path, change: Callable[[Path], None]) -> None:
    """A catalogue copy the manifest agrees with: only opening it can tell what is wrong."""
    catalogue = backup / "catalogue.sqlite3"
    change(catalogue)
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["catalogue"]["bytes"] = catalogue.stat().st_size
    manifest["catalogue"]["sha256"] = hashlib.sha256(catalogue.read_bytes()).hexdigest()
    (backup / "manifest.json").write_text(json.dumps(manifest))


def tear(catalogue: Path) -> None:
    data = bytearray(catalogue.read_bytes())
    data[4096 * 2 : 4096 * 4] = bytes(4096 * 2)  # two pages zeroed
    catalogue.write_bytes(bytes(data))


def from_a_newer_schema(catalogue: Path) -> None:
    with sqlite3.connect(catalogue) as db:
        db.execute("INSERT INTO schema_migrations (version) VALUES (99)")


DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "no manifest": (lambda b: (b / "manifest.json").unlink(), "has no manifest.json"),
    "image cut short": (lambda b: truncate(first_image(b)), "cut short"),
    "image changed": (lambda b: flip_last_byte(first_image(b)), "SHA-256 differs"),
    "image missing": (lambda b: first_image(b).unlink(), "is missing"),
    "catalogue cut short": (lambda b: truncate(b / "catalogue.sqlite3"), "catalogue.sqlite3 has"),
    "catalogue torn": (
        lambda b: change_catalogue_and_its_manifest(b, tear),
        "catalogue.sqlite3 is damaged",
    ),
    "catalogue from a newer schema": (
        lambda b: change_catalogue_and_its_manifest(b, from_a_newer_schema),
        "schema version 99",
    ),
    "manifest cut short": (lambda b: truncate(b / "manifest.json"), "manifest.json is damaged"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_partial_backup_is_refused_and_the_target_left_untouched(
    cli: Cli, tmp_path: Path, backup: Path, damage: str
) -> None:
    harm, said = DAMAGE[damage]
    harm(backup)
    target = tmp_path / "restored"

    code, out, err = cli("restore", "--data-dir", str(target), str(backup))

    assert code == 1
    assert said in err
    assert out == ""
    assert not target.exists()


def test_a_target_holding_a_library_is_refused_unless_replace_is_given(
    cli: Cli, tmp_path: Path, backup: Path
) -> None:
    other = tmp_path / "other"
    assert cli("caption", "--data-dir", str(other), str(tmp_path / "photos" / "cat.png"))[0] == 0
    (tmp_path / "new.png").write_bytes(fake_image("new"))
    assert cli("caption", "--data-dir", str(other), str(tmp_path / "new.png"))[0] == 0
    before = table(other, "images")

    refused = cli("restore", "--data-dir", str(other), str(backup))
    replaced = cli("restore", "--data-dir", str(other), "--replace", str(backup))

    assert refused[0] == 1
    assert "--replace" in refused[2]
    assert len(before) == 2
    assert replaced[0] == 0, replaced[2]
    assert replaced[1].splitlines()[-1] == "checked 4 files, 5 records: no problems"
    assert table(other, "images") == table(tmp_path / "library", "images")


def test_a_restore_cut_short_after_its_files_finishes_when_run_again(
    cli: Cli, tmp_path: Path, backup: Path
) -> None:
    target = tmp_path / "restored"
    shutil.copytree(backup / "uploads", target / "uploads")  # the files went in, then a crash

    code, out, err = cli("restore", "--data-dir", str(target), str(backup))

    assert code == 0, err
    assert out.splitlines()[-1] == "checked 4 files, 5 records: no problems"


def test_a_backup_is_never_written_into_a_folder_that_holds_files(
    cli: Cli, tmp_path: Path, backup: Path
) -> None:
    code, _, err = cli("backup", "--data-dir", str(tmp_path / "library"), str(backup))

    assert code == 1
    assert "not an empty folder" in err


def a_png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (index % 256, index // 256 % 256, 99)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Backend:
    """Where a live library keeps its catalogue and files, and where its restore goes."""

    source: dict[str, str]
    target: dict[str, str]
    records: Callable[[], set[tuple[int, str]]]


@pytest.fixture(params=["sqlite+disk", "postgresql+s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """SQLite and a data dir (the default), or PostgreSQL and an S3 bucket (replicas)."""
    restored = tmp_path / "restored"
    if request.param == "sqlite+disk":
        yield Backend({}, {}, lambda: {(row[0], row[1]) for row in rows(restored)})
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    names = [server.create_database() for _ in range(2)]
    source, target = (server.url(name) for name in names)
    other = new_bucket(bucket.endpoint)
    try:
        yield Backend(
            {"CAPTIONER_DATABASE_URL": source, "CAPTIONER_STORE_URL": bucket.store_url},
            {"CAPTIONER_DATABASE_URL": target, "CAPTIONER_STORE_URL": other.store_url},
            lambda: {(row[0], row[1]) for row in pg_table(target, "images")},
        )
    finally:
        for name in names:
            server.drop_database(name)


@pytest.fixture
def live_library(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path]]:
    """The real app (decoder, store, catalogue, batcher) with a fast fake model, on a port;
    the CLI after it sees the same settings."""
    data_dir = tmp_path / "live"
    for name, value in backend.source.items():
        monkeypatch.setenv(name, value)
    environ = {"CAPTIONER_DATA_DIR": str(data_dir), **backend.source}
    container = build_container(Settings.load(environ=environ))
    container.model.override(providers.Object(FakeBatchModel()))
    try:
        with serving(create_app(container)) as url:
            yield url, data_dir
    finally:
        container.shutdown_resources()


def test_a_backup_taken_while_eight_clients_upload_restores_every_upload_answered_before_it(
    cli: Cli,
    tmp_path: Path,
    live_library: tuple[str, Path],
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, data_dir = live_library
    answered: list[tuple[float, dict[str, Any]]] = []
    lock, stop = threading.Lock(), threading.Event()

    def upload(client: int) -> None:
        for n in range(10_000):
            if stop.is_set():
                return
            image = a_png(client * 10_000 + n)
            response = requests.post(f"{url}/upload", files={"image": ("p.png", image)}, timeout=30)
            assert response.status_code == 200, response.text
            with lock:
                answered.append((time.monotonic(), response.json()))

    clients = [threading.Thread(target=upload, args=(i,)) for i in range(UPLOADERS)]
    for client in clients:
        client.start()
    try:
        while len(answered) < 80:
            time.sleep(0.01)
        began = time.monotonic()
        code, _, err = cli("backup", "--data-dir", str(data_dir), str(tmp_path / "backup"))
        ended = time.monotonic()
        time.sleep(0.2)  # uploads go on after it too
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)
    assert code == 0, err
    target = tmp_path / "restored"
    for name, value in backend.target.items():
        monkeypatch.setenv(name, value)

    restored = cli("restore", "--data-dir", str(target), str(tmp_path / "backup"))

    assert restored[0] == 0, restored[2]
    assert restored[1].splitlines()[-1].endswith(": no problems")
    before = {(body["id"], body["sha256"]) for at, body in answered if at < began}
    during = [body for at, body in answered if began <= at <= ended]
    kept = backend.records()
    assert before <= kept
    assert during  # the backup really ran beside uploads
    assert len(kept) < len(answered)  # and is the library as of one instant, not the end


def pg_table(url: str, name: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as db:
        return db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()


@pytest.fixture
def two_databases(postgres_server: PostgresServer) -> Iterator[tuple[str, str]]:
    names = [postgres_server.create_database() for _ in range(2)]
    try:
        yield postgres_server.url(names[0]), postgres_server.url(names[1])
    finally:
        for name in names:
            postgres_server.drop_database(name)


def backed_up_elsewhere(
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    source: str,
    target: str,
    before: Callable[[], object] = lambda: None,
) -> tuple[Path, str]:
    """A library made with ``setting`` = ``source``, backed up (after ``before``); then
    ``setting`` = ``target``, for a restore. The backup folder and its output."""
    monkeypatch.setenv(setting, source)
    make_library(cli, tmp_path / "library", tmp_path / "photos")
    before()
    backup = tmp_path / "backup"
    code, out, err = cli("backup", "--data-dir", str(tmp_path / "library"), str(backup))
    assert code == 0, err
    monkeypatch.setenv(setting, target)
    return backup, out


def restore_into_new_dir(cli: Cli, tmp_path: Path, backup: Path) -> tuple[int, str, str]:
    return cli("restore", "--data-dir", str(tmp_path / "restored"), str(backup))


def test_a_postgresql_library_goes_through_pg_dump_and_pg_restore_into_another_database(
    cli: Cli, tmp_path: Path, two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = two_databases
    backup, taken = backed_up_elsewhere(
        cli, tmp_path, monkeypatch, "CAPTIONER_DATABASE_URL", source, target
    )

    restored = restore_into_new_dir(cli, tmp_path, backup)
    again = restore_into_new_dir(cli, tmp_path, backup)

    assert "postgres catalogue" in taken
    assert json.loads((backup / "manifest.json").read_text())["catalogue"]["path"] == (
        "catalogue.pgdump"
    )
    assert restored[0] == 0, restored[2]
    assert restored[1].splitlines()[-1] == "checked 4 files, 5 records: no problems"
    for name in ("images", "api_keys"):
        assert pg_table(target, name) == pg_table(source, name)
    assert again[0] == 1
    assert "holds a library already" in again[2]


def no_tables(url: str) -> bool:
    return pg_table(url, "pg_tables WHERE schemaname = 'public'") == []


def test_a_cut_short_pg_dump_is_refused(
    cli: Cli, tmp_path: Path, two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = two_databases
    backup, _ = backed_up_elsewhere(
        cli, tmp_path, monkeypatch, "CAPTIONER_DATABASE_URL", source, target
    )
    truncate(backup / "catalogue.pgdump")

    code, _, err = restore_into_new_dir(cli, tmp_path, backup)

    assert code == 1
    assert "catalogue.pgdump has" in err
    assert not (tmp_path / "restored").exists()
    assert no_tables(target)


def test_a_pg_dump_from_a_newer_schema_is_refused_before_the_database_is_touched(
    cli: Cli, tmp_path: Path, two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    source, target = two_databases

    def newer_schema() -> None:
        with psycopg.connect(source) as db:
            db.execute("INSERT INTO schema_migrations (version) VALUES (99)")

    backup, _ = backed_up_elsewhere(
        cli, tmp_path, monkeypatch, "CAPTIONER_DATABASE_URL", source, target, newer_schema
    )

    code, _, err = restore_into_new_dir(cli, tmp_path, backup)

    assert code == 1
    assert "schema version 99" in err
    assert no_tables(target)


def test_a_library_on_s3_is_backed_up_and_restored_through_the_store(
    cli: Cli, tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = new_bucket(s3_bucket.endpoint)
    backup, _ = backed_up_elsewhere(
        cli, tmp_path, monkeypatch, "CAPTIONER_STORE_URL", s3_bucket.store_url, other.store_url
    )

    code, out, err = restore_into_new_dir(cli, tmp_path, backup)

    assert code == 0, err
    assert out.splitlines()[-1] == "checked 4 files, 5 records: no problems"
    images = [key for key in s3_bucket.object_keys() if key.endswith(".png")]
    assert len(images) == 4
    assert [key for key in other.object_keys() if key.endswith(".png")] == images
