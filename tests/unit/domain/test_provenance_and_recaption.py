"""Where captions come from, which images are known, re-captioning and export (service, fakes)."""

from __future__ import annotations

import io
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captioner.domain.errors import ImageNotFound, InvalidRequest, StoredFileMissing
from captioner.domain.model import Description, ImageDigest, ImageUpload
from captioner.domain.rules import MAX_KNOWN_DIGESTS
from captioner.domain.service import CaptionService
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)


class Library:
    """One store and catalogue, and a service per model over them (as separate runs would)."""

    def __init__(self) -> None:
        self.store = InMemoryImageStore()
        self.repository = InMemoryCaptionRepository()
        self.captioners: dict[str, FakeCaptioner] = {}

    def service(self, model: str = "fake-model", prompt: str = "") -> CaptionService:
        captioner = self.captioners.setdefault(model, FakeCaptioner(model))
        return CaptionService(
            captioner, FakeImageDecoder(), self.store, self.repository, default_prompt=prompt
        )

    def upload(self, content: str, model: str = "fake-model", prompt: str = "") -> Description:
        service = self.service(model)
        return service.describe(ImageUpload(io.BytesIO(fake_image(content)), "a.jpg", prompt))


@pytest.fixture
def library() -> Library:
    return Library()


def digest_of(content: str) -> str:
    return ImageDigest.of_bytes(fake_image(content)).hex


def test_a_new_caption_records_the_weights_its_settings_with_the_prompt_and_model_time(
    library: Library,
) -> None:
    record = library.upload("cat", prompt="a photo of").record

    assert record.provenance.model_revision == "fake-revision-1"
    assert record.provenance.settings == {
        "max_new_tokens": 30,
        "num_beams": 1,
        "prompt": "a photo of",
    }
    assert record.duration_ms == 1.5


def test_a_duplicate_reports_the_original_runs_provenance_and_duration(
    library: Library,
) -> None:
    first = library.upload("cat").record
    library.captioners["fake-model"].revision = "fake-revision-2"
    library.captioners["fake-model"].delay_s = 0.01

    again = library.upload("cat")

    assert again.duplicate
    assert again.record.provenance == first.provenance
    assert again.record.duration_ms == first.duration_ms


def test_known_splits_digests_for_the_current_model_and_default_prompt_in_two_lookups(
    library: Library,
) -> None:
    cat = library.upload("cat").record
    library.upload("dog", model="other-model")  # another model's caption is not "known"
    library.upload("bird", prompt="a photo of")  # nor is one asked with another prompt
    asked = [digest_of("cat"), digest_of("dog"), digest_of("bird"), digest_of("cat")]

    known = library.service().known(asked)

    assert {sha: record.id for sha, record in known.records.items()} == {cat.sha256: cat.id}
    assert known.unknown == (digest_of("dog"), digest_of("bird"))
    assert library.repository.batch_lookups == 2  # one per caption source: the model's, a person's


def test_known_answers_a_full_batch_of_digests_with_a_lookup_per_caption_source(
    library: Library,
) -> None:
    digests = [ImageDigest.of_bytes(str(n).encode()).hex for n in range(MAX_KNOWN_DIGESTS)]

    known = library.service().known(digests)

    assert known.unknown == tuple(digests)
    assert library.repository.batch_lookups == 2  # one per caption source: the model's, a person's


def test_known_refuses_more_digests_than_the_limit(library: Library) -> None:
    digests = [ImageDigest.of_bytes(str(n).encode()).hex for n in range(MAX_KNOWN_DIGESTS + 1)]

    with pytest.raises(InvalidRequest, match="at most 1000"):
        library.service().known(digests)


@given(st.text(max_size=70).filter(lambda text: len(text) != 64 or text != text.lower()))
def test_known_refuses_anything_but_lowercase_hex_digests(text: str) -> None:
    with pytest.raises(InvalidRequest, match="Not a SHA-256"):
        Library().service().known([text])


def test_recaption_adds_a_caption_by_the_new_model_and_keeps_the_old_ones(
    library: Library,
) -> None:
    old = library.upload("cat").record
    library.upload("dog")
    newer = library.service("new-model")

    done = [newer.recaption(record) for record in newer.waiting_for_caption()]

    assert [result.record.model for result in done] == ["new-model", "new-model"]
    assert not any(result.duplicate for result in done)
    captions = newer.captions(old.id)
    assert next((c.model, c.id) for c in captions) == ("fake-model", old.id)
    assert [c.model for c in captions] == ["fake-model", "new-model"]
    assert library.captioners["new-model"].call_count == 2


def test_recaption_skips_images_already_done_so_a_rerun_does_nothing(
    library: Library,
) -> None:
    for name in ("cat", "dog", "bird"):
        library.upload(name)
    newer = library.service("new-model")
    first = next(iter(newer.waiting_for_caption()))
    newer.recaption(first)  # an interrupted run got this far

    rest = list(newer.waiting_for_caption())
    for record in rest:
        newer.recaption(record)

    assert [r.sha256 for r in rest] == [digest_of("dog"), digest_of("bird")]
    assert newer.count_waiting_for_caption() == 0
    assert list(newer.waiting_for_caption()) == []
    assert library.captioners["new-model"].call_count == 3


def test_recaption_with_another_prompt_counts_as_its_own_caption(library: Library) -> None:
    library.upload("cat")
    library.upload("cat", prompt="a photo of")
    prompted = library.service(prompt="a drawing of")

    waiting = list(prompted.waiting_for_caption())  # the image once, not once per record
    results = [prompted.recaption(record) for record in waiting]

    assert len(waiting) == 1
    assert results[0].record.prompt == "a drawing of"
    assert results[0].record.provenance.settings["prompt"] == "a drawing of"


def test_waiting_for_caption_stops_at_the_limit(library: Library) -> None:
    for name in ("cat", "dog", "bird"):
        library.upload(name)

    waiting = list(library.service("new-model").waiting_for_caption(limit=2))

    assert len(waiting) == 2


def test_recaption_of_an_image_whose_file_is_gone_says_the_file_is_missing(
    library: Library,
) -> None:
    record = library.upload("cat").record
    library.store.delete(record.path)

    # The entrypoint adds what to run; the domain names no command.
    with pytest.raises(StoredFileMissing, match=f"image {record.id} is missing"):
        library.service("new-model").recaption(record)


def test_recaption_of_an_image_deleted_since_it_was_listed_says_it_was_deleted(
    library: Library,
) -> None:
    record = library.upload("cat").record
    library.service().delete(record.id)

    with pytest.raises(ImageNotFound, match=f"Image {record.id} was deleted"):
        library.service("new-model").recaption(record)
    assert library.repository.find(record.sha256, "new-model", "") is None


def test_export_yields_every_record_or_one_models(library: Library) -> None:
    library.upload("cat")
    library.upload("cat", model="other-model")
    library.upload("dog")
    service = library.service()

    everything = [(r.model, r.sha256) for r in service.export()]
    other = [r.model for r in service.export(model="other-model")]

    assert len(everything) == 3
    assert other == ["other-model"]


def test_workers_recaptioning_the_same_library_at_once_run_the_model_once_per_image(
    library: Library,
) -> None:
    names = [f"image {n}" for n in range(6)]
    for name in names:
        library.upload(name)
    newer = library.service("new-model")
    library.captioners["new-model"].delay_s = 0.05  # long enough for the workers to collide

    def worker() -> None:
        for record in newer.waiting_for_caption():
            newer.recaption(record)

    workers = [threading.Thread(target=worker) for _ in range(3)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)

    assert library.captioners["new-model"].call_count == len(names)
    assert newer.count_waiting_for_caption() == 0
    assert sum(r.model == "new-model" for r in library.repository.rows.values()) == len(names)


def test_export_by_prompt_matches_however_the_prompt_is_spaced(library: Library) -> None:
    library.upload("cat", prompt="a photo of")

    found = [r.prompt for r in library.service().export(prompt="  a  photo   of ")]

    assert found == ["a photo of"]
