"""Importing captions: kept for the bytes without the model, a person's answers a later
describe, another captioner's keeps its provenance, and a different caption is a conflict."""

from __future__ import annotations

import io

import pytest

from captioner.domain.errors import InvalidRequest
from captioner.domain.imported import ImportedCaption
from captioner.domain.model import PERSON_MODEL, ImageDigest, ImageUpload, Provenance
from tests.support.fakes import World, fake_image


@pytest.fixture
def world() -> World:
    return World()


def upload(name: str) -> ImageUpload:
    return ImageUpload(io.BytesIO(fake_image(name)), f"{name}.jpg")


def test_an_imported_persons_caption_answers_a_later_describe_without_the_model(
    world: World,
) -> None:
    imported = world.service.import_caption(upload("cat"), ImportedCaption("my cat, Tom"))

    described = world.service.describe(upload("cat"))

    assert imported.status == "added"
    assert imported.record.model == PERSON_MODEL
    assert imported.record.provenance.settings["source"] == "person"
    assert imported.record.provenance.settings["by"] == "import"
    assert described.duplicate
    assert described.record == imported.record
    assert world.captioner.call_count == 0
    digest = ImageDigest.of_bytes(fake_image("cat")).hex
    assert world.service.known([digest]).records[digest] == imported.record
    assert world.store.files[imported.record.path] == fake_image("cat")


def test_a_persons_caption_does_not_answer_a_describe_with_another_prompt(world: World) -> None:
    world.service.import_caption(upload("cat"), ImportedCaption("my cat, Tom"))

    asked = world.service.describe(
        ImageUpload(io.BytesIO(fake_image("cat")), "cat.jpg", prompt="a photo of")
    )

    assert not asked.duplicate
    assert world.captioner.call_count == 1


def test_another_captioners_caption_keeps_its_model_prompt_and_provenance(world: World) -> None:
    provenance = Provenance.of("rev-9", {"max_new_tokens": 30, "prompt": "a photo of"})
    caption = ImportedCaption(
        "a photo of a cat",
        model=world.captioner.model_name,
        prompt="a photo of",
        provenance=provenance,
        duration_ms=120.0,
    )

    outcome = world.service.import_caption(upload("cat"), caption)
    again = world.service.describe(
        ImageUpload(io.BytesIO(fake_image("cat")), "cat.jpg", prompt="a photo of")
    )

    assert outcome.record.model == world.captioner.model_name
    assert outcome.record.prompt == "a photo of"
    assert outcome.record.provenance == provenance
    assert outcome.record.duration_ms == 120.0
    assert again.record == outcome.record
    assert world.captioner.call_count == 0


def test_a_different_caption_already_kept_is_a_conflict_and_stays(world: World) -> None:
    first = world.service.import_caption(upload("cat"), ImportedCaption("my cat, Tom"))

    same = world.service.import_caption(upload("cat"), ImportedCaption(" my cat,  Tom "))
    other = world.service.import_caption(upload("cat"), ImportedCaption("a dog"))

    assert same.status == "unchanged"
    assert other.status == "conflict"
    assert other.record == first.record
    assert world.service.get(first.record.id).description == "my cat, Tom"


def test_a_caption_of_other_bytes_or_an_empty_one_is_refused(world: World) -> None:
    with pytest.raises(InvalidRequest, match="other bytes"):
        world.service.import_caption(
            upload("cat"), ImportedCaption("a cat", model="m", sha256="0" * 64)
        )
    with pytest.raises(InvalidRequest, match="empty"):
        world.service.import_caption(upload("cat"), ImportedCaption("   "))
    assert world.repository.get(1) is None
