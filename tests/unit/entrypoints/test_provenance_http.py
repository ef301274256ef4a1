"""Provenance, the hash check, every caption of an image, and the streamed export over HTTP."""

from __future__ import annotations

import io
import json
from typing import Any

from captioner.domain.model import ImageDigest
from tests.support.fakes import fake_image
from tests.unit.conftest import FakeWorld


def upload(world: FakeWorld, content: str, **form: str) -> dict[str, Any]:
    response = world.client.post(
        "/upload",
        data={"image": (io.BytesIO(fake_image(content)), "photo.jpg"), **form},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def digest(content: str) -> str:
    return ImageDigest.of_bytes(fake_image(content)).hex


def test_upload_listing_and_image_show_provenance_and_duration(fake_world: FakeWorld) -> None:
    uploaded = upload(fake_world, "cat")
    listed = fake_world.client.get("/images").get_json()[0]
    shown = fake_world.client.get(f"/images/{uploaded['id']}").get_json()

    for body in (uploaded, listed, shown):
        assert body["model_revision"] == "fake-revision-1"
        assert body["generation"] == {"max_new_tokens": 30, "num_beams": 1, "prompt": ""}
        assert body["duration_ms"] == 1.5


def test_check_answers_known_digests_with_their_ids_and_the_rest_as_unknown(
    fake_world: FakeWorld,
) -> None:
    cat = upload(fake_world, "cat")
    upload(fake_world, "dog", prompt="a photo of")  # not the default prompt: still unknown

    response = fake_world.client.post(
        "/images/check", json={"sha256": [digest("dog"), digest("cat"), digest("bird")]}
    )

    assert response.status_code == 200
    assert response.get_json() == {
        "known": {digest("cat"): cat["id"]},
        "unknown": [digest("dog"), digest("bird")],
    }
    assert (
        fake_world.repository.batch_lookups == 2
    )  # one per caption source: the model's, a person's


def test_check_of_an_empty_list_knows_nothing(fake_world: FakeWorld) -> None:
    response = fake_world.client.post("/images/check", json={"sha256": []})

    assert response.get_json() == {"known": {}, "unknown": []}


def test_check_refuses_malformed_bodies_with_400(fake_world: FakeWorld) -> None:
    too_many = [ImageDigest.of_bytes(str(n).encode()).hex for n in range(1001)]
    bodies: list[Any] = [
        {"sha256": ["not-a-digest"]},
        {"sha256": [digest("cat").upper()]},
        {"sha256": [digest("cat") + "0"]},
        {"sha256": [1234]},
        {"sha256": digest("cat")},
        {"digests": [digest("cat")]},
        {"sha256": too_many},
        [digest("cat")],
        None,
    ]
    for body in bodies:
        response = fake_world.client.post("/images/check", json=body)
        assert response.status_code == 400, body
        assert response.get_json()["error"]
    garbled = fake_world.client.post(
        "/images/check", data="{not json", content_type="application/json"
    )
    assert garbled.status_code == 400


def test_captions_of_an_image_lists_every_model_and_prompt_oldest_first(
    fake_world: FakeWorld,
) -> None:
    first = upload(fake_world, "cat")
    upload(fake_world, "cat", prompt="a photo of")
    upload(fake_world, "dog")

    captions = fake_world.client.get(f"/images/{first['id']}/captions").get_json()

    assert [(c["sha256"], c["prompt"]) for c in captions] == [
        (digest("cat"), ""),
        (digest("cat"), "a photo of"),
    ]
    assert fake_world.client.get("/images/999/captions").status_code == 404


def test_export_streams_one_json_object_per_record_with_provenance(
    fake_world: FakeWorld,
) -> None:
    for name in ("cat", "dog", "bird"):
        upload(fake_world, name)

    response = fake_world.client.get("/images/export.jsonl")

    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert [line["sha256"] for line in lines] == [digest("cat"), digest("dog"), digest("bird")]
    for line in lines:
        assert {"sha256", "path", "description", "model", "model_revision", "generation"} <= set(
            line
        )
        assert line["duration_ms"] == 1.5


def test_export_of_an_empty_catalogue_is_an_empty_body(fake_world: FakeWorld) -> None:
    response = fake_world.client.get("/images/export.jsonl")

    assert response.status_code == 200
    assert response.get_data() == b""
