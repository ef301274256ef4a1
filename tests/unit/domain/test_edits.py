"""A person's caption (service.edit): kept beside the model's, shown first, kept by recaption."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captioner.domain.errors import ImageNotFound, InvalidRequest
from captioner.domain.model import (
    PERSON_MODEL,
    CaptionChoice,
    ImageRecord,
    ImageUpload,
    caption_rank,
    shown_caption,
)
from captioner.domain.rules import MAX_CAPTION_CHARS
from captioner.domain.service import CaptionService
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)

WHEN = datetime(2026, 12, 2, 21, 0, tzinfo=timezone(timedelta(hours=1)))


class Library:
    """One store and catalogue; a service per model over them, on a fixed clock."""

    def __init__(self) -> None:
        self.store = InMemoryImageStore()
        self.repository = InMemoryCaptionRepository()
        self.captioners: dict[str, FakeCaptioner] = {}

    def service(self, model: str = "fake-model") -> CaptionService:
        captioner = self.captioners.setdefault(model, FakeCaptioner(model))
        return CaptionService(
            captioner, FakeImageDecoder(), self.store, self.repository, clock=lambda: WHEN
        )

    def upload(self, content: str) -> ImageRecord:
        upload = ImageUpload(io.BytesIO(fake_image(content)), f"{content}.jpg")
        return self.service().describe(upload).record


@pytest.fixture
def library() -> Library:
    return Library()


def test_an_edit_is_a_person_caption_with_who_and_when(library: Library) -> None:
    record = library.upload("cat")

    edited = library.service().edit(record.id, " a tabby ", by="ann")

    assert (edited.model, edited.source, edited.description) == (PERSON_MODEL, "person", "a tabby")
    assert edited.prompt == ""
    assert edited.sha256 == record.sha256
    assert edited.provenance.settings == {
        "source": "person",
        "by": "ann",
        "at": "2026-12-02T20:00:00+00:00",
    }
    assert [c.source for c in library.service().captions(record.id)] == ["model", "person"]
    assert library.service().list().records == (edited,)


def test_a_second_edit_replaces_the_first(library: Library) -> None:
    record = library.upload("cat")
    service = library.service()
    first = service.edit(record.id, "a tabby", by="ann")

    second = service.edit(first.id, "a ginger tabby", by="bob")

    assert second.id == first.id
    assert [c.description for c in service.captions(record.id)] == [
        record.description,
        "a ginger tabby",
    ]


def test_recaption_keeps_an_edit_unless_told_to_replace_it(library: Library) -> None:
    cat, dog = library.upload("cat"), library.upload("dog")
    library.service().edit(cat.id, "a tabby", by="ann")
    library.service().edit(dog.id, "a beagle", by="ann")
    newer = library.service("new-model")
    waiting = list(newer.waiting_for_caption())

    newer.recaption(waiting[0])
    newer.recaption(waiting[1], replace_edits=True)

    assert [w.sha256 for w in waiting] == [cat.sha256, dog.sha256]  # "person" is not the model
    shown = {r.sha256: r for r in newer.list().records}
    assert shown[cat.sha256].description == "a tabby"
    assert shown[dog.sha256].model == "new-model"
    assert [c.model for c in newer.captions(dog.id)] == ["fake-model", "new-model"]
    assert list(newer.waiting_for_caption()) == []


def test_an_edit_of_an_unknown_image_is_not_found(library: Library) -> None:
    with pytest.raises(ImageNotFound):
        library.service().edit(7, "a cat", by="ann")


@pytest.mark.parametrize("text", ["", "   \n\t", "x" * (MAX_CAPTION_CHARS + 1)])
def test_blank_or_overlong_edits_are_refused(library: Library, text: str) -> None:
    record = library.upload("cat")

    with pytest.raises(InvalidRequest):
        library.service().edit(record.id, text, by="ann")
    assert [c.source for c in library.service().captions(record.id)] == ["model"]


@given(st.text(min_size=1, max_size=MAX_CAPTION_CHARS).filter(lambda t: t.strip()))
def test_any_non_blank_text_round_trips_stripped(text: str) -> None:
    library = Library()
    record = library.upload("cat")

    edited = library.service().edit(record.id, text, by="ann")

    assert edited.description == text.strip()
    assert library.service().get(edited.id).description == text.strip()


@given(model=st.sampled_from(["m", "other"]), prompt=st.sampled_from(["", "p"]))
def test_a_persons_caption_outranks_every_model_caption(model: str, prompt: str) -> None:
    base = dict(sha256="a" * 64, path="p", width=1, height=1, content_type="image/png")
    person = ImageRecord(
        id=1,
        description="x",
        model=PERSON_MODEL,
        prompt="",
        created_at=WHEN,
        original_name=None,
        **base,  # type: ignore[arg-type]
    )
    others = [
        ImageRecord(
            id=i,
            description="y",
            model=model,
            prompt=prompt,
            created_at=WHEN,
            original_name=None,
            **base,  # type: ignore[arg-type]
        )
        for i in (2, 3)
    ]
    choice = CaptionChoice(model="m", prompt="")

    assert max([*others, person], key=lambda c: caption_rank(c, choice)) == person
    assert shown_caption([*others, person], choice) == person
