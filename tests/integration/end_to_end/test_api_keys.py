"""API keys on a real data dir: the key ring contract, the CLI, replicas, nothing kept in clear."""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers
from flask import Flask

from captioner.adapters.catalogue.migrations import schema_steps
from captioner.adapters.catalogue.postgres import PostgresCaptionRepository
from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.access import ApiKey, Scope
from captioner.domain.errors import KeyNameTaken
from captioner.domain.ports import KeyRing, RecentHits
from captioner.domain.throttle import Rate, Throttle
from captioner.entrypoints.cli import main
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryKeyRing,
    fake_image,
)
from tests.support.old_schemas import build_sqlite

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["in-memory", "sqlite", "postgresql"])
def key_ring(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyRing]:
    """Every KeyRing the container can wire: the fake and each catalogue."""
    if request.param == "in-memory":
        yield InMemoryKeyRing()
        return
    if request.param == "sqlite":
        repository: SqliteCaptionRepository | PostgresCaptionRepository = SqliteCaptionRepository(
            tmp_path / "catalogue.sqlite3"
        )
    else:
        repository = PostgresCaptionRepository(request.getfixturevalue("postgres_url"))
    yield repository
    repository.close()


def api_key(name: str, scope: Scope = Scope.READ) -> ApiKey:
    return ApiKey(name=name, scope=scope, created_at=NOW)


def test_key_ring_keeps_keys_by_hash_and_lists_them_oldest_first(key_ring: KeyRing) -> None:
    assert not key_ring.has_keys()
    key_ring.add_key(api_key("b", Scope.ADMIN), "b" * 64)
    key_ring.add_key(ApiKey("a", Scope.READ, NOW + timedelta(seconds=1)), "a" * 64)

    assert key_ring.has_keys()
    assert [key.name for key in key_ring.all_keys()] == ["b", "a"]
    assert key_ring.key_with_hash("b" * 64) == (api_key("b", Scope.ADMIN), "b" * 64)
    assert key_ring.key_with_hash("c" * 64) is None
    with pytest.raises(KeyNameTaken):
        key_ring.add_key(api_key("b"), "d" * 64)


def test_key_ring_marks_use_and_forgets_revoked_keys_with_their_sessions(
    key_ring: KeyRing,
) -> None:
    key_ring.add_key(api_key("k"), "k" * 64)
    key_ring.add_session("s" * 64, "k", NOW + timedelta(hours=1))
    key_ring.mark_used("k", NOW + timedelta(minutes=5))

    found = key_ring.key_of_session("s" * 64, NOW)
    assert found is not None
    assert found[0].last_used_at == NOW + timedelta(minutes=5)
    assert found[1] == "s" * 64
    assert key_ring.key_of_session("s" * 64, NOW + timedelta(hours=2)) is None

    assert key_ring.remove_key("k") is True
    assert key_ring.remove_key("k") is False
    assert key_ring.key_of_session("s" * 64, NOW) is None
    assert not key_ring.has_keys()


def test_key_ring_removes_a_session_on_sign_out(key_ring: KeyRing) -> None:
    key_ring.add_key(api_key("k"), "k" * 64)
    key_ring.add_session("s" * 64, "k", NOW + timedelta(hours=1))

    key_ring.remove_session("s" * 64)

    assert key_ring.key_of_session("s" * 64, NOW) is None


def test_key_ring_keeps_a_metrics_key(key_ring: KeyRing) -> None:
    key_ring.add_key(api_key("prometheus", Scope.METRICS), "m" * 64)

    assert key_ring.key_with_hash("m" * 64) == (api_key("prometheus", Scope.METRICS), "m" * 64)


def test_a_catalogue_from_before_the_metrics_scope_keeps_its_keys_and_sessions(
    tmp_path: Path,
) -> None:
    steps = schema_steps("sqlite")
    before = next(i for i, step in enumerate(steps) if "'metrics'" in step.script)
    database = tmp_path / "c.sqlite3"
    build_sqlite(database, before)
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO api_keys (name, scope, key_sha256, created_at, last_used_at) "
            "VALUES ('ops', 'admin', ?, ?, ?)",
            ("k" * 64, NOW.isoformat(), NOW.isoformat()),
        )
        db.execute(
            "INSERT INTO api_sessions VALUES (?, 'ops', ?)",
            ("s" * 64, (NOW + timedelta(hours=1)).isoformat()),
        )
    db.close()

    repository = SqliteCaptionRepository(database)
    repository.add_key(api_key("prometheus", Scope.METRICS), "m" * 64)

    assert repository.schema_version == len(steps)
    kept = repository.key_of_session("s" * 64, NOW)
    assert kept is not None
    assert (kept[0].name, kept[0].scope, kept[0].last_used_at) == ("ops", Scope.ADMIN, NOW)
    assert [key.scope for key in repository.all_keys()] == [Scope.ADMIN, Scope.METRICS]
    assert repository.remove_key("ops")  # the sessions still belong to their key
    assert repository.key_of_session("s" * 64, NOW) is None
    repository.close()


def test_keys_come_with_their_own_migration(tmp_path: Path) -> None:
    repository = SqliteCaptionRepository(tmp_path / "c.sqlite3")

    steps = schema_steps("sqlite")
    assert repository.schema_version == len(steps)
    # A step of their own after the first schema, so existing catalogues gain them.
    assert any("CREATE TABLE api_keys" in step.script for step in steps[1:])
    assert "api_keys" not in steps[0].script
    repository.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_prints_the_key_once_as_the_last_line_and_list_never_shows_it(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "keys", "create", "--scope", "upload", "--name", "ci", "--data-dir", str(data_dir)
    )
    secret = out.splitlines()[-1]
    listed_code, listed, _ = run(capsys, "keys", "list", "--data-dir", str(data_dir))
    as_json_code, as_json, _ = run(capsys, "keys", "list", "--json", "--data-dir", str(data_dir))

    assert code == 0
    assert secret.startswith("cap_")
    assert listed_code == as_json_code == 0
    name, scope, created, last_used = listed.strip().split("\t")
    assert (name, scope, last_used) == ("ci", "upload", "never")
    assert created.startswith(str(datetime.now(timezone.utc).year))
    assert secret not in listed
    assert secret not in as_json
    assert '"scope": "upload"' in as_json


def test_keys_revoke_by_name_and_an_unknown_name_fails(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keys", "create", "--scope", "read", "--name", "temp", "--data-dir", str(data_dir))

    revoked = run(capsys, "keys", "revoke", "temp", "--data-dir", str(data_dir))
    again = run(capsys, "keys", "revoke", "temp", "--data-dir", str(data_dir))
    listed = run(capsys, "keys", "list", "--data-dir", str(data_dir))

    assert revoked[0] == 0
    assert again[0] == 1
    assert "temp" in again[2]
    assert listed[1] == ""


def test_serve_beyond_loopback_without_a_key_refuses_to_start(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "serve", "--host", "0.0.0.0", "--data-dir", str(data_dir))

    assert code == 2
    assert "captioner keys create" in err
    assert "CAPTIONER_AUTH=off" in err


def replica(data_dir: Path, **settings: Any) -> Flask:
    """One `captioner serve` process's app over a shared data dir (fake model, real SQLite,
    or the catalogue ``settings`` name)."""
    from captioner.entrypoints.http import create_app

    container = build_container(Settings(data_dir=data_dir, **settings))
    container.captioner.override(providers.Object(FakeCaptioner()))
    container.image_decoder.override(providers.Object(FakeImageDecoder()))
    app = create_app(container)
    app.testing = True
    return app


def create_key(capsys: pytest.CaptureFixture[str], data_dir: Path, scope: str, name: str) -> str:
    code, out, _ = run(
        capsys, "keys", "create", "--scope", scope, "--name", name, "--data-dir", str(data_dir)
    )
    assert code == 0
    return out.splitlines()[-1]


def test_a_key_revoked_from_the_cli_is_refused_by_every_running_replica(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = create_key(capsys, data_dir, "read", "shared")
    # Another key stays: on loopback, auto would open up again once no key is left at all.
    create_key(capsys, data_dir, "admin", "ops")
    replicas = [replica(data_dir).test_client() for _ in range(2)]
    headers = {"Authorization": f"Bearer {secret}"}
    assert [r.get("/images", headers=headers).status_code for r in replicas] == [200, 200]

    assert run(capsys, "keys", "revoke", "shared", "--data-dir", str(data_dir))[0] == 0

    assert [r.get("/images", headers=headers).status_code for r in replicas] == [401, 401]


def test_a_metrics_key_from_the_cli_scrapes_metrics_and_sees_no_image(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scraper = {"Authorization": f"Bearer {create_key(capsys, data_dir, 'metrics', 'prom')}"}
    admin = {"Authorization": f"Bearer {create_key(capsys, data_dir, 'admin', 'ops')}"}
    reader = {"Authorization": f"Bearer {create_key(capsys, data_dir, 'read', 'viewer')}"}
    client = replica(data_dir).test_client()
    uploaded = client.post(
        "/upload", data={"image": (io.BytesIO(fake_image("a")), "a.jpg")}, headers=admin
    )
    image = f"/images/{uploaded.get_json()['id']}"

    scraped = client.get("/metrics", headers=scraper)
    assert scraped.status_code == 200
    assert b"captioner_" in scraped.data
    assert client.get("/metrics", headers=admin).status_code == 200
    assert client.get("/metrics", headers=reader).status_code == 403
    for path in ("/images", image, f"{image}/file", f"{image}/thumbnail"):
        assert client.get(path, headers=scraper).status_code == 403, path
    assert client.post("/upload", headers=scraper).status_code == 403
    assert client.delete(image, headers=scraper).status_code == 403
    _, listed, _ = run(capsys, "keys", "list", "--data-dir", str(data_dir))
    assert "prom\tmetrics\t" in listed


def all_bytes_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def test_keys_and_session_tokens_are_nowhere_in_the_data_dir_in_plain_text(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = [create_key(capsys, data_dir, scope.value, scope.value) for scope in Scope]
    client = replica(data_dir).test_client()
    signed_in = client.post("/session", data={"key": secrets[1]})
    token = signed_in.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    uploaded = client.post("/upload", data={"image": (io.BytesIO(fake_image("a")), "a.jpg")})
    client.get("/images", headers={"X-API-Key": secrets[0]})
    assert signed_in.status_code == uploaded.status_code == 200

    stored = all_bytes_under(data_dir)

    assert b"api_keys" in stored  # the database was read: the search looked in the right place
    for secret in [*secrets, token]:
        for form in (secret, secret.removeprefix("cap_")):
            assert form.encode() not in stored
            assert form.encode("utf-16-le") not in stored


# --- wrong keys are counted in the catalogue: every replica over it counts together ----------


@pytest.fixture(params=["in-memory", "sqlite", "postgresql"])
def two_replicas_hits(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RecentHits, RecentHits]]:
    """Two replicas' handles on one catalogue's hits (the fake: one object seen twice)."""
    if request.param == "in-memory":
        shared = InMemoryCaptionRepository()
        yield shared, shared
        return
    handles: list[SqliteCaptionRepository | PostgresCaptionRepository]
    if request.param == "sqlite":
        handles = [SqliteCaptionRepository(tmp_path / "catalogue.sqlite3") for _ in range(2)]
    else:
        url = request.getfixturevalue("postgres_url")
        handles = [PostgresCaptionRepository(url, max_connections=12) for _ in range(2)]
    yield handles[0], handles[1]
    for handle in handles:
        handle.close()


def test_wrong_keys_on_one_replica_count_toward_the_limit_on_the_other(
    two_replicas_hits: tuple[RecentHits, RecentHits],
) -> None:
    one, other = (Throttle(h, "wrong_keys", Rate(3, 60.0)) for h in two_replicas_hits)

    waits = [one.hit("10.0.0.1"), other.hit("10.0.0.1"), one.hit("10.0.0.1")]
    refused = other.hit("10.0.0.1")

    assert waits == [None, None, None]
    assert refused is not None
    assert 1 <= refused <= 60
    assert one.blocked_for("10.0.0.1") is not None
    assert other.blocked_for("10.0.0.1") is not None
    assert other.blocked_for("10.0.0.2") is None  # another address has its own count
    # Another counter over the same catalogue counts apart.
    assert Throttle(two_replicas_hits[1], "other", Rate(3, 60.0)).blocked_for("10.0.0.1") is None


def test_hits_leave_the_count_once_their_window_has_passed(
    two_replicas_hits: tuple[RecentHits, RecentHits],
) -> None:
    one, other = (Throttle(h, "wrong_keys", Rate(2, 1.0)) for h in two_replicas_hits)
    one.hit("10.0.0.1")
    other.hit("10.0.0.1")
    assert one.blocked_for("10.0.0.1") == 1

    time.sleep(1.1)

    assert other.blocked_for("10.0.0.1") is None
    assert one.hit("10.0.0.1") is None


def test_wrong_keys_arriving_at_once_on_both_replicas_are_counted_exactly(
    two_replicas_hits: tuple[RecentHits, RecentHits],
) -> None:
    throttles = [Throttle(h, "wrong_keys", Rate(5, 60.0)) for h in two_replicas_hits]

    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda i: throttles[i % 2].hit("10.0.0.1"), range(16)))

    assert waits.count(None) == 5
    assert throttles[0].blocked_for("10.0.0.1") is not None


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings two replicas share a catalogue by: the data dir's SQLite, or PostgreSQL."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("postgres_url")}


def test_wrong_keys_sent_to_two_replicas_get_429_with_retry_after_from_both(
    data_dir: Path, catalogue_settings: dict[str, Any]
) -> None:
    settings = {"auth": "on", "auth_failure_rate": "4/minute", **catalogue_settings}
    replicas = [replica(data_dir, **settings).test_client() for _ in range(2)]
    wrong = {"Authorization": "Bearer cap_wrong"}

    statuses = [replicas[i % 2].get("/images", headers=wrong).status_code for i in range(4)]
    refused = [r.get("/images", headers=wrong) for r in replicas]
    signing_in = replicas[0].post("/session", data={"key": "cap_wrong"})

    assert statuses == [401, 401, 401, 401]
    assert [r.status_code for r in refused] == [429, 429]
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    assert all("Too many wrong API keys" in r.get_json()["error"] for r in refused)
    assert signing_in.status_code == 429
