"""PATCH /images/<id>: a person's caption over HTTP, shown, searched and exported first."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.domain.access import Scope
from captioner.domain.rules import MAX_CAPTION_CHARS
from tests.support.fakes import fake_image
from tests.unit.conftest import FakeWorld, build_fake_world


def uploaded(world: FakeWorld, content: str = "cat", **headers: str) -> dict[str, Any]:
    response = world.client.post(
        "/upload",
        data={"image": (io.BytesIO(fake_image(content)), f"{content}.jpg")},
        headers=headers,
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def patch(world: FakeWorld, image_id: int, body: Any, **headers: str) -> Any:
    return world.client.patch(
        f"/images/{image_id}",
        data=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def test_an_edit_answers_the_persons_record_and_becomes_the_shown_caption(
    fake_world: FakeWorld,
) -> None:
    record = uploaded(fake_world)

    response = patch(fake_world, record["id"], {"description": "  a tabby asleep  "})

    body = response.get_json()
    assert response.status_code == 200
    assert body["description"] == "a tabby asleep"
    assert (body["source"], body["model"]) == ("person", "person")
    assert body["sha256"] == record["sha256"]
    assert body["generation"]["by"] == "anonymous"  # keys are off on loopback
    assert body["generation"]["at"].endswith("+00:00")
    listed = fake_world.client.get("/images").get_json()
    assert [(e["description"], e["source"], e["captions"]) for e in listed] == [
        ("a tabby asleep", "person", 2)
    ]


def test_the_models_caption_stays_among_the_images_captions(fake_world: FakeWorld) -> None:
    record = uploaded(fake_world)
    patch(fake_world, record["id"], {"description": "first try"})
    patch(fake_world, record["id"], {"description": "a tabby asleep"})

    captions = fake_world.client.get(f"/images/{record['id']}/captions").get_json()

    assert [(c["source"], c["description"]) for c in captions] == [
        ("model", record["description"]),
        ("person", "a tabby asleep"),  # the second edit replaced the first
    ]


def test_search_finds_the_edited_words_and_export_says_a_person_wrote_them(
    fake_world: FakeWorld,
) -> None:
    record = uploaded(fake_world)
    uploaded(fake_world, "dog")
    patch(fake_world, record["id"], {"description": "a tabby asleep"})

    found = fake_world.client.get("/images?q=tabby").get_json()
    lines = fake_world.client.get("/images/export.jsonl").get_data(as_text=True).splitlines()

    assert [e["description"] for e in found] == ["a tabby asleep"]
    assert sorted(json.loads(line)["source"] for line in lines) == ["model", "model", "person"]


def test_an_edit_is_by_the_keys_name(tmp_path: Path) -> None:
    world = build_fake_world(Settings(data_dir=tmp_path / "data", max_upload_mb=1))
    try:
        secret = world.container.access().create_key(Scope.UPLOAD, "ann").secret
        record = uploaded(world, **{"X-API-Key": secret})

        body = patch(world, record["id"], {"description": "ok"}, **{"X-API-Key": secret})

        assert body.get_json()["generation"]["by"] == "ann"
    finally:
        world.container.unwire()


def test_blank_long_or_malformed_edits_are_refused_and_change_nothing(
    fake_world: FakeWorld,
) -> None:
    record = uploaded(fake_world)

    answers = [
        patch(fake_world, record["id"], body)
        for body in (
            {"description": "   "},
            {"description": "x" * (MAX_CAPTION_CHARS + 1)},
            {"description": 5},
            {"text": "wrong field"},
            {},
            "not json",
        )
    ]

    assert [a.status_code for a in answers] == [400] * 6
    assert all(a.get_json()["error"] for a in answers)
    captions = fake_world.client.get(f"/images/{record['id']}/captions").get_json()
    assert [c["source"] for c in captions] == ["model"]


def test_an_edit_of_an_unknown_image_is_a_404(fake_world: FakeWorld) -> None:
    assert patch(fake_world, 99, {"description": "a cat"}).status_code == 404
