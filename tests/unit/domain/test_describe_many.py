"""describe_many: describe's rules for a batch of uploads, with the catalogue's work batched."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence

from captioner.domain.errors import CaptioningFailed, CatalogueUnavailable, UnsupportedImageType
from captioner.domain.model import CaptionKey, Description, ImageDigest, ImageRecord, ImageUpload
from captioner.domain.service import CaptionService
from tests.support.clocks import ShiftedClock
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)

WAIT = 5.0  # generous bound for "soon" on a loaded machine; never reached when things work


class CountingObserver:
    """The DescribeObserver port, counting what it hears."""

    def __init__(self) -> None:
        self.generated = 0
        self.duplicates = 0
        self._lock = threading.Lock()

    def caption_generated(self) -> None:
        with self._lock:
            self.generated += 1

    def duplicate_upload(self) -> None:
        with self._lock:
            self.duplicates += 1


class Writer:
    """One process writing to the shared catalogue: its own model, service and counts."""

    def __init__(
        self,
        catalogue: InMemoryCaptionRepository,
        store: InMemoryImageStore,
        delay_s: float = 0.0,
        lease_s: float = 30.0,
    ) -> None:
        self.captioner = FakeCaptioner(delay_s=delay_s)
        self.observer = CountingObserver()
        self.service = CaptionService(
            self.captioner,
            FakeImageDecoder(),
            store,
            catalogue,
            default_prompt="",
            observer=self.observer,
            claim_lease_s=lease_s,
            claim_wait_s=30.0,
        )

    def many(self, images: list[bytes], batch: int = 8) -> list[Description | Exception]:
        return self.service.describe_many(
            [ImageUpload(io.BytesIO(data), f"{n}.png") for n, data in enumerate(images)], batch
        )

    def runs_on(self, data: bytes) -> int:
        return sum(1 for pixels, _ in self.captioner.calls if pixels == data)


def described(outcome: Description | Exception) -> Description:
    assert isinstance(outcome, Description), outcome
    return outcome


def sha_of(data: bytes) -> str:
    return ImageDigest.of_bytes(data).hex


def test_a_batch_answers_known_new_duplicate_and_failing_images_each_as_describe_would() -> None:
    catalogue, store = InMemoryCaptionRepository(), InMemoryImageStore()
    writer = Writer(catalogue, store)
    known, new, twice, broken = (fake_image(name) for name in ("known", "new", "twice", "broken"))
    before = writer.service.describe(ImageUpload(io.BytesIO(known)))
    writer.captioner.fail_on.add(broken)

    outcomes = writer.many([known, new, twice, twice, broken, b"not an image", new])

    first_known, first_new, first_twice, second_twice, failed, refused, second_new = outcomes
    assert described(first_known).duplicate
    assert described(first_known).record == before.record
    assert not described(first_new).duplicate
    assert described(second_new).duplicate
    assert described(second_new).record == described(first_new).record
    assert not described(first_twice).duplicate
    assert described(second_twice).duplicate
    assert isinstance(failed, CaptioningFailed)
    assert isinstance(refused, UnsupportedImageType)
    assert [writer.runs_on(data) for data in (known, new, twice, broken)] == [1, 1, 1, 1]
    stored = {record.sha256 for record in catalogue.rows.values()}
    assert stored == {sha_of(data) for data in (known, new, twice)}
    assert store.files.keys() == {record.path for record in catalogue.rows.values()}
    assert catalogue.claims == {}  # every claim given back, the failed one's too
    assert writer.observer.generated == 3  # known's describe, then new's and twice's runs
    assert writer.observer.duplicates == 3  # known, the second twice, the second new


def test_a_model_batch_takes_one_claim_statement_and_one_write_transaction() -> None:
    catalogue, store = InMemoryCaptionRepository(), InMemoryImageStore()
    writer = Writer(catalogue, store)
    images = [fake_image(f"image {n}") for n in range(20)]

    outcomes = writer.many(images, batch=8)

    assert all(isinstance(o, Description) and not o.duplicate for o in outcomes)
    assert writer.captioner.call_count == 20
    assert len(catalogue.rows) == 20
    assert catalogue.claim_statements == 3  # 8 + 8 + 4
    assert catalogue.batch_writes == 3


def test_a_failed_image_does_not_keep_its_batch_from_being_stored() -> None:
    catalogue, store = InMemoryCaptionRepository(), InMemoryImageStore()
    writer = Writer(catalogue, store)
    images = [fake_image(f"image {n}") for n in range(4)]
    writer.captioner.fail_on.add(images[1])

    outcomes = writer.many(images, batch=4)

    assert [isinstance(outcome, Description) for outcome in outcomes] == [True, False, True, True]
    assert len(catalogue.rows) == 3
    retried = writer.many([images[1]])  # its claim was given back: the next try runs it
    assert isinstance(retried[0], CaptioningFailed)
    assert writer.runs_on(images[1]) == 2


def test_an_image_another_writer_is_describing_gets_that_writers_record_without_a_run() -> None:
    catalogue, store = InMemoryCaptionRepository(), InMemoryImageStore()
    slow = Writer(catalogue, store, delay_s=0.3)
    bulk = Writer(catalogue, store)
    shared, own = fake_image("uploaded meanwhile"), fake_image("bulk's own")
    answer: list[Description] = []
    upload = threading.Thread(
        target=lambda: answer.append(slow.service.describe(ImageUpload(io.BytesIO(shared))))
    )
    upload.start()
    deadline = time.monotonic() + WAIT
    while slow.captioner.call_count == 0 and time.monotonic() < deadline:
        time.sleep(0.005)  # until the upload holds the claim and runs the model

    outcomes = bulk.many([shared, own])
    upload.join()

    held, mine = outcomes
    assert described(held).duplicate
    assert described(held).record == answer[0].record
    assert not described(mine).duplicate
    assert (slow.runs_on(shared), bulk.runs_on(shared), bulk.runs_on(own)) == (1, 0, 1)
    assert len(catalogue.rows) == 2


def test_an_image_whose_other_writer_died_is_taken_over_and_run_once() -> None:
    store = InMemoryImageStore()
    clock = ShiftedClock()
    catalogue = InMemoryCaptionRepository(clock=clock)
    orphan = fake_image("claimed by a writer that died")
    assert (
        catalogue.claim(CaptionKey(sha_of(orphan), "fake-model", ""), 2.0) is not None
    )  # never completed
    bulk = Writer(catalogue, store, lease_s=2.0)
    threading.Timer(0.2, clock.advance, args=(3.0,)).start()  # its lease runs out

    outcomes = bulk.many([orphan, fake_image("other")])

    assert all(isinstance(o, Description) and not o.duplicate for o in outcomes)
    assert bulk.runs_on(orphan) == 1
    assert len(catalogue.rows) == 2


def test_two_writers_with_the_same_batch_at_once_run_the_model_once_per_image() -> None:
    catalogue, store = InMemoryCaptionRepository(), InMemoryImageStore()
    writers = [Writer(catalogue, store, delay_s=0.01) for _ in range(3)]
    images = [fake_image(f"shared {n}") for n in range(12)]
    results: list[list[Description | Exception]] = [[] for _ in writers]
    threads = [
        threading.Thread(target=lambda n=n: results[n].extend(writers[n].many(images, batch=4)))
        for n in range(len(writers))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    answers = [[o for o in batch if isinstance(o, Description)] for batch in results]
    assert [len(batch) for batch in answers] == [12, 12, 12]
    assert sum(writer.captioner.call_count for writer in writers) == 12
    assert len(catalogue.rows) == 12
    for n in range(12):  # everybody got the one record of each image
        assert len({batch[n].record.id for batch in answers}) == 1


def test_a_person_caption_answers_for_its_image_without_a_model_run() -> None:
    catalogue, store = InMemoryCaptionRepository(), InMemoryImageStore()
    writer = Writer(catalogue, store)
    edited = fake_image("described by a person")
    record = writer.service.describe(ImageUpload(io.BytesIO(edited))).record
    person = writer.service.edit(record.id, "my cat on the sofa", by="test")
    runs = writer.captioner.call_count

    outcomes = writer.many([edited])

    assert described(outcomes[0]).duplicate
    assert described(outcomes[0]).record == person
    assert writer.captioner.call_count == runs


class UnreachableCatalogue(InMemoryCaptionRepository):
    """A catalogue whose database went away: every lookup fails."""

    def find_many(self, sha256s: Sequence[str], model: str, prompt: str) -> Sequence[ImageRecord]:
        raise CatalogueUnavailable("the database is unreachable", retry_after_s=5)


def test_an_unreachable_catalogue_fails_every_image_of_the_batch_without_raising() -> None:
    writer = Writer(UnreachableCatalogue(), InMemoryImageStore())

    outcomes = writer.many([fake_image("one"), fake_image("two")])

    assert [type(outcome) for outcome in outcomes] == [CatalogueUnavailable] * 2
    assert writer.captioner.call_count == 0
