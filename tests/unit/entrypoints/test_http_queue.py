"""Asynchronous uploads, GET /queue, the queue gauges and `captioner caption --no-wait` /
`captioner jobs`, over fakes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from captioner.config import Settings
from captioner.domain.model import Readiness
from captioner.entrypoints.cli import main
from tests.support.fakes import fake_image
from tests.support.prometheus import sample
from tests.unit.conftest import FakeWorld, build_fake_world


def upload(world: FakeWorld, data: bytes, query: str = "", **headers: str) -> Any:
    return world.client.post(
        f"/upload{query}",
        data={"image": (io.BytesIO(data), "photo.jpg")},
        content_type="multipart/form-data",
        headers=headers,
    )


@pytest.mark.parametrize(
    ("query", "prefer"),
    [("", "respond-async"), ("", "wait=10, Respond-Async; x=1"), ("?wait=false", "")],
)
def test_an_async_upload_is_a_202_with_the_pending_record_and_its_location(
    fake_world: FakeWorld, query: str, prefer: str
) -> None:
    headers = {"Prefer": prefer} if prefer else {}

    response = upload(fake_world, fake_image("cat"), query, **headers)

    body = response.get_json()
    assert response.status_code == 202
    assert response.headers["Location"] == f"/images/{body['id']}"
    assert (body["status"], body["description"], body["attempts"]) == ("pending", "", 0)
    assert response.headers.get("Preference-Applied") == ("respond-async" if prefer else None)
    assert fake_world.captioner.call_count == 0


def test_pending_images_are_listed_fetched_previewed_and_deleted(fake_world: FakeWorld) -> None:
    image_id = upload(fake_world, fake_image("cat"), "?wait=false").get_json()["id"]

    listed = fake_world.client.get("/images").get_json()
    one = fake_world.client.get(f"/images/{image_id}").get_json()
    file = fake_world.client.get(f"/images/{image_id}/file")
    thumbnail = fake_world.client.get(f"/images/{image_id}/thumbnail")
    exported = fake_world.client.get("/images/export.jsonl").data
    deleted = fake_world.client.delete(f"/images/{image_id}")

    assert [(i["id"], i["status"], i["description"]) for i in listed] == [(image_id, "pending", "")]
    assert one["status"] == "pending"
    assert file.status_code == 200
    assert file.data == fake_image("cat")
    assert thumbnail.status_code == 200
    assert exported == b""  # nothing captioned yet
    assert deleted.status_code == 200


def test_a_known_image_sent_async_is_answered_200_with_its_caption(fake_world: FakeWorld) -> None:
    first = upload(fake_world, fake_image("cat")).get_json()

    again = upload(fake_world, fake_image("cat"), Prefer="respond-async")

    assert again.status_code == 200
    assert again.get_json()["description"] == first["description"]
    assert again.get_json()["duplicate"] is True


def test_a_sync_upload_refused_by_a_model_that_is_down_stays_queued(
    fake_world: FakeWorld,
) -> None:
    fake_world.captioner.ready = Readiness(False, "model server down")

    refused = upload(fake_world, fake_image("cat"))
    queue = fake_world.client.get("/queue").get_json()

    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert queue["pending"] == 1
    assert queue["counts"] == {"captioned": 0, "pending": 1, "failed": 0}


def test_the_queue_route_and_gauges_show_what_waits(fake_world: FakeWorld) -> None:
    for name in ("a", "b"):
        upload(fake_world, fake_image(name), "?wait=false")
    fake_world.repository.heartbeat("worker 1", "fake-model")

    queue = fake_world.client.get("/queue").get_json()
    metrics = fake_world.client.get("/metrics").data.decode()

    assert queue["pending"] == 2
    assert queue["oldest_pending_age_s"] >= 0
    assert queue["workers_alive"] == 1
    assert queue["workers"][0]["name"] == "worker 1"
    assert sample(metrics, "captioner_queue_pending") == 2
    assert sample(metrics, "captioner_queue_oldest_pending_age_seconds") >= 0


def test_caption_no_wait_queues_files_and_jobs_lists_retries_and_cancels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = build_fake_world(Settings(data_dir=tmp_path / "data"))
    world.container.settings().database_path.parent.mkdir(parents=True, exist_ok=True)
    world.container.settings().database_path.touch()  # a library exists here
    photo, other = tmp_path / "cat.jpg", tmp_path / "dog.jpg"
    photo.write_bytes(fake_image("cat"))
    other.write_bytes(fake_image("dog"))

    def run(*argv: str) -> int:
        return main([*argv, "--data-dir", str(tmp_path / "data")], lambda s, m: world.container)

    assert run("caption", "--no-wait", "--json", str(photo), str(other)) == 0
    queued = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert run("jobs", "--json") == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert run("jobs", "cancel", str(queued[1]["id"])) == 0
    assert run("jobs", "retry", str(queued[0]["id"])) == 1  # pending, not failed
    capsys.readouterr()
    assert run("jobs") == 0
    left = capsys.readouterr()

    assert [q["status"] for q in queued] == ["pending", "pending"]
    assert world.captioner.call_count == 0
    # Files are captioned side by side: ids follow whichever was kept first, listing is by id.
    assert [item["id"] for item in listed] == sorted(q["id"] for q in queued)
    assert left.out.split("\t")[:2] == [str(queued[0]["id"]), "pending"]
    assert "1 pending" in left.err
