"""Listings show one entry per image with its current caption; every caption stays reachable."""

from __future__ import annotations

import io
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.domain.model import CaptionChoice, ImageRecord
from captioner.domain.service import CaptionService
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    World,
    fake_image,
)
from tests.support.records import new_record
from tests.unit.conftest import FakeWorld

PHOTOS = [fake_image(name) for name in ("beach", "dog", "cat", "city")]


def _upload(world: FakeWorld, data: bytes, prompt: str = "") -> dict[str, object]:
    form = {"image": (io.BytesIO(data), "photo.png"), "prompt": prompt}
    response = world.client.post("/upload", data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.data
    body: dict[str, object] = response.get_json()
    return body


def _recaption_all(world: FakeWorld, model: str, prompt: str = "") -> None:
    """What `captioner recaption --model M` does: every stored image, described by M."""
    other = CaptionService(FakeCaptioner(model), FakeImageDecoder(), world.store, world.repository)
    for record in list(other.waiting_for_caption(prompt)):
        other.recaption(record, prompt)


def _listed(world: FakeWorld, query: str = "") -> list[dict[str, object]]:
    response = world.client.get(f"/images{query}")
    assert response.status_code == 200, response.data
    body: list[dict[str, object]] = response.get_json()
    return body


def test_a_recaption_leaves_four_photos_as_four_images(fake_world: FakeWorld) -> None:
    uploaded = [_upload(fake_world, photo) for photo in PHOTOS]

    _recaption_all(fake_world, "new-model")
    listed = _listed(fake_world)

    assert len(fake_world.repository.rows) == 8
    assert [body["id"] for body in listed] == [body["id"] for body in uploaded][::-1]
    assert {body["model"] for body in listed} == {"fake-model"}  # the configured model's
    assert {body["captions"] for body in listed} == {2}
    assert len(_listed(fake_world, "?q=picture")) == 4
    service = fake_world.container.service()
    assert len(service.list().records) == 4


def test_a_photo_uploaded_plain_with_a_prompt_and_recaptioned_shows_once(
    fake_world: FakeWorld,
) -> None:
    plain = _upload(fake_world, PHOTOS[0])
    _upload(fake_world, PHOTOS[0], prompt="a photograph of")
    _recaption_all(fake_world, "new-model")

    listed = _listed(fake_world)

    assert [(body["id"], body["captions"]) for body in listed] == [(plain["id"], 3)]


def test_without_the_configured_models_caption_the_newest_is_shown(
    fake_world: FakeWorld,
) -> None:
    fake_world.repository.add(new_record("a", "old words", model="old-model"))
    newest, _ = fake_world.repository.add(new_record("a", "new words", model="newer-model"))

    assert [body["id"] for body in _listed(fake_world)] == [newest.id]


def test_search_matches_the_shown_caption_and_old_words_only_by_their_model(
    fake_world: FakeWorld,
) -> None:
    fake_world.repository.add(new_record("a", "a zebra on grass", model="old-model"))
    fake_world.repository.add(new_record("a", "a horse in a field", model="fake-model"))

    assert _listed(fake_world, "?q=zebra") == []
    assert [body["description"] for body in _listed(fake_world, "?q=horse")] == [
        "a horse in a field"
    ]
    assert [body["description"] for body in _listed(fake_world, "?q=zebra&model=old-model")] == [
        "a zebra on grass"
    ]


def test_the_model_filter_shows_that_models_captions_of_the_images_it_described(
    fake_world: FakeWorld,
) -> None:
    for photo in PHOTOS:
        _upload(fake_world, photo)
    other = CaptionService(
        FakeCaptioner("new-model"), FakeImageDecoder(), fake_world.store, fake_world.repository
    )
    first = next(iter(other.waiting_for_caption()))
    other.recaption(first)

    by_new = _listed(fake_world, "?model=new-model")

    assert [(body["sha256"], body["model"]) for body in by_new] == [(first.sha256, "new-model")]
    assert _listed(fake_world, "?model=nobody") == []


def test_captions_endpoint_and_models_endpoint_reach_every_caption(
    fake_world: FakeWorld,
) -> None:
    plain = _upload(fake_world, PHOTOS[0])
    _upload(fake_world, PHOTOS[0], prompt="a photograph of")
    _upload(fake_world, PHOTOS[1])
    _recaption_all(fake_world, "new-model")

    captions = fake_world.client.get(f"/images/{plain['id']}/captions").get_json()
    models = fake_world.client.get("/models").get_json()

    assert [(c["model"], c["prompt"]) for c in captions] == [
        ("fake-model", ""),
        ("fake-model", "a photograph of"),
        ("new-model", ""),
    ]
    assert all(c["created_at"] for c in captions)
    assert models == [
        {"model": "fake-model", "images": 2, "configured": True},
        {"model": "new-model", "images": 2, "configured": False},
    ]


def test_deleting_a_card_removes_the_image_with_all_its_captions(fake_world: FakeWorld) -> None:
    plain = _upload(fake_world, PHOTOS[0])
    _upload(fake_world, PHOTOS[0], prompt="a photograph of")
    kept = _upload(fake_world, PHOTOS[1])
    _recaption_all(fake_world, "new-model")

    deleted = fake_world.client.delete(f"/images/{plain['id']}")

    assert deleted.get_json() == {"deleted": plain["id"]}
    assert [body["id"] for body in _listed(fake_world)] == [kept["id"]]
    assert {r.sha256 for r in fake_world.repository.rows.values()} == {kept["sha256"]}
    assert not fake_world.store.exists(str(plain["path"]))


def test_the_next_page_link_keeps_the_model_filter(fake_world: FakeWorld) -> None:
    for photo in PHOTOS:
        _upload(fake_world, photo)

    page = fake_world.client.get("/images?limit=2&model=fake-model")

    assert "model=fake-model" in page.headers["Link"]


# Random catalogues: a few images, each described by some of a few models and prompts, in any
# order (re-captions come later than first uploads, interleaved).
_CAPTIONS = st.lists(
    st.tuples(
        st.integers(0, 7),
        st.sampled_from(["m", "other", "third"]),
        st.sampled_from(["", "describe"]),
    ),
    min_size=0,
    max_size=40,
)


def _expected(rows: list[ImageRecord], choice: CaptionChoice) -> list[ImageRecord]:
    """The rule written out plainly: per image its preferred caption, else its newest."""
    first: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: r.id):
        first.setdefault(row.sha256, row.id)
    shown = []
    for sha256, _ in sorted(first.items(), key=lambda item: -item[1]):
        mine = [r for r in rows if r.sha256 == sha256]
        if choice.only_model:
            mine = [r for r in mine if r.model == choice.model]
        if not mine:
            continue
        preferred = [r for r in mine if (r.model, r.prompt) == (choice.model, choice.prompt)]
        shown.append(preferred[0] if preferred else max(mine, key=lambda r: r.id))
    return shown


@settings(max_examples=150, deadline=None)
@given(
    captions=_CAPTIONS,
    limit=st.integers(1, 5),
    model=st.sampled_from([None, "m", "other"]),
)
def test_pages_show_each_image_once_newest_first_with_no_gaps(
    captions: list[tuple[int, str, str]], limit: int, model: str | None
) -> None:
    world = World()
    repository: InMemoryCaptionRepository = world.repository
    world.service = CaptionService(
        FakeCaptioner("m"), FakeImageDecoder(), InMemoryImageStore(), repository
    )
    for image, by, prompt in captions:
        repository.add(replace(new_record(str(image), model=by, prompt=prompt)))

    seen: list[ImageRecord] = []
    before = None
    for _ in range(len(captions) + 2):
        page = world.service.list(limit=limit, before=before, model=model)
        seen += page.records
        if page.next_before is None:
            break
        before = page.next_before

    choice = CaptionChoice(model=model or "m", prompt="", only_model=model is not None)
    assert seen == _expected(list(repository.rows.values()), choice)
