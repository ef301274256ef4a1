"""Two replicas over one catalogue and one store: a delete never takes a new record's file."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

import pytest

from captioner.domain.errors import ImageNotFound, StorageUnavailable
from captioner.domain.imported import ImportedCaption
from captioner.domain.model import DeletesSeen, Description, ImageDigest, ImageUpload
from captioner.domain.one_run_per_key import DELETE_MARKS_KEPT_S, DELETE_STALE_S, file_may_be_gone
from captioner.domain.service import CaptionService
from tests.support.clocks import ShiftedClock
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)


class InterleavingStore(InMemoryImageStore):
    """A shared store that runs the other replica's step at the moment the race needs it."""

    def __init__(self) -> None:
        super().__init__()
        self.before_delete: Callable[[], object] | None = None
        self.after_save: Callable[[], object] | None = None
        self.after_open: Callable[[], object] | None = None
        self.lookups = 0  # exists calls: each a stat on disk, a HEAD on S3
        self.failing_deletes = False

    def save(
        self,
        digest: ImageDigest,
        content: BinaryIO,
        extension: str,
        local_path: str | None = None,
    ) -> str:
        path = super().save(digest, content, extension, local_path)
        step, self.after_save = self.after_save, None
        if step is not None:
            step()
        return path

    def open(self, path: str) -> BinaryIO:
        try:
            return super().open(path)
        finally:
            step, self.after_open = self.after_open, None
            if step is not None:
                step()

    def exists(self, path: str) -> bool:
        self.lookups += 1
        return super().exists(path)

    def delete(self, path: str) -> None:
        step, self.before_delete = self.before_delete, None
        if step is not None:
            step()
        if self.failing_deletes:
            raise StorageUnavailable("the bucket did not answer")
        super().delete(path)


def _replicas(
    repository: InMemoryCaptionRepository | None = None,
) -> tuple[InterleavingStore, CaptionService, CaptionService]:
    store, catalogue = InterleavingStore(), repository or InMemoryCaptionRepository()

    def replica() -> CaptionService:
        return CaptionService(
            FakeCaptioner(),
            FakeImageDecoder(),
            store,
            catalogue,
            max_upload_bytes=1000,
            queue=catalogue,
        )

    return store, replica(), replica()


def _has_its_file(store: InMemoryImageStore, service: CaptionService, record_id: int) -> bool:
    record = service.get(record_id)
    with store.open(record.path) as stored:
        return ImageDigest.of_stream(stored).hex == record.sha256


def _upload(service: CaptionService, data: bytes, prompt: str = "") -> int:
    return service.describe(ImageUpload(io.BytesIO(data), "a.png", prompt)).record.id


def test_record_committed_while_a_delete_removes_the_file_keeps_its_file() -> None:
    store, deleting, uploading = _replicas()
    data = fake_image("shared bytes")
    first = _upload(deleting, data)
    new_ids: list[int] = []
    # The upload finds the file present, commits and checks, all before the file goes.
    store.before_delete = lambda: new_ids.append(_upload(uploading, data, "say more"))

    deleting.delete(first)

    assert _has_its_file(store, uploading, new_ids[0])


def test_delete_between_an_uploads_save_and_its_commit_keeps_the_new_records_file() -> None:
    store, deleting, uploading = _replicas()
    data = fake_image("shared bytes")
    first = _upload(deleting, data)

    # The upload finds the file present; the whole delete runs before its row commits.
    def delete_first() -> None:
        deleting.delete(first)

    store.after_save = delete_first

    second = _upload(uploading, data, "say more")

    assert _has_its_file(store, uploading, second)


def test_a_delete_that_found_no_file_leaves_the_file_an_upload_stored_meanwhile() -> None:
    store, deleting, uploading = _replicas()
    data = fake_image("shared bytes")
    first = _upload(deleting, data)
    store.files.clear()  # the file was already gone (`check` would report missing_file)
    new_ids: list[int] = []
    # The upload stores the file afresh, commits and checks, between the delete's look at the
    # file (none) and what it does next.
    store.after_open = lambda: new_ids.append(_upload(uploading, data, "say more"))

    deleting.delete(first)

    assert _has_its_file(store, uploading, new_ids[0])


# --- the marks of deletes in flight: when the upload asks the store at all ------------------


def _upload_ways(service: CaptionService, data: bytes) -> list[Callable[[], object]]:
    """The ways bytes get stored with a record: a caption, a batch's caption (bulk), the
    queue, an import."""

    def upload() -> ImageUpload:
        return ImageUpload(io.BytesIO(data), "a.png", "")

    def described_in_a_batch() -> object:
        (outcome,) = service.describe_many([upload()], batch=8)
        assert not isinstance(outcome, Exception), outcome
        return outcome

    return [
        lambda: service.describe(upload()),
        described_in_a_batch,
        lambda: service.submit(upload()),
        lambda: service.import_caption(upload(), ImportedCaption("my words")),
    ]


WAYS = pytest.mark.parametrize("way", [0, 1, 2, 3], ids=["describe", "batch", "submit", "import"])


@WAYS
def test_an_upload_no_delete_met_does_not_ask_the_store_about_its_file(way: int) -> None:
    store, deleting, uploading = _replicas()
    data = fake_image("shared bytes")
    deleting.delete(_upload(deleting, data))  # a delete long done: its marks are settled

    _upload_ways(uploading, data)[way]()

    assert store.lookups == 0
    assert store.files  # stored all the same


@WAYS
def test_an_upload_while_a_delete_of_its_bytes_is_in_flight_checks_its_file(way: int) -> None:
    repository = InMemoryCaptionRepository()
    store, _, uploading = _replicas(repository)
    data = fake_image("shared bytes")
    repository.begin_delete(ImageDigest.of_bytes(data).hex)  # another replica, mid-delete

    _upload_ways(uploading, data)[way]()

    assert store.lookups == 1


@pytest.mark.parametrize("in_a_batch", [False, True], ids=["describe", "batch"])
def test_an_upload_that_a_whole_delete_ran_inside_checks_its_file_and_keeps_it(
    in_a_batch: bool,
) -> None:
    store, deleting, uploading = _replicas()
    data = fake_image("shared bytes")
    first = _upload(deleting, data)
    # Not in flight before the upload's save, nor after its commit: only the ticket tells.
    store.after_save = lambda: deleting.delete(first)

    if in_a_batch:
        (outcome,) = uploading.describe_many([ImageUpload(io.BytesIO(data), "a.png", "x")], 8)
        assert isinstance(outcome, Description), outcome
        second = outcome.record.id
    else:
        second = _upload(uploading, data, "say more")

    assert store.lookups == 1
    assert _has_its_file(store, uploading, second)


def _one_image_stored(
    repository: InMemoryCaptionRepository,
) -> tuple[InterleavingStore, CaptionService, CaptionService, str, int]:
    """Two replicas over ``repository``; the first stored some bytes: their digest, its id."""
    store, deleting, uploading = _replicas(repository)
    data = fake_image("shared bytes")
    return store, deleting, uploading, ImageDigest.of_bytes(data).hex, _upload(deleting, data)


def test_a_delete_is_marked_in_flight_until_its_file_is_settled() -> None:
    repository = InMemoryCaptionRepository()
    store, deleting, _, sha256, first = _one_image_stored(repository)
    seen: list[DeletesSeen] = []
    store.before_delete = lambda: seen.append(repository.deletes_of(sha256))

    deleting.delete(first)

    after = repository.deletes_of(sha256)
    assert [mark.running for mark in seen] == [1]
    assert after.running == 0
    assert after.ticket == seen[0].ticket != ""


def test_a_cancel_that_keeps_the_file_for_another_record_unmarks_and_keeps_it() -> None:
    repository = InMemoryCaptionRepository()
    store, deleting, _ = _replicas(repository)
    data = fake_image("shared bytes")
    queued = deleting.submit(ImageUpload(io.BytesIO(data), "a.png", "")).record.id
    captioned = _upload(deleting, data, "say more")  # another record of the same file

    deleting.cancel(queued)

    assert repository.deletes_of(ImageDigest.of_bytes(data).hex).running == 0
    assert _has_its_file(store, deleting, captioned)


def test_a_delete_whose_store_fails_leaves_its_mark_in_flight_and_uploads_recheck() -> None:
    repository = InMemoryCaptionRepository()
    store, deleting, uploading, sha256, first = _one_image_stored(repository)
    store.failing_deletes = True

    deleting.delete(first)  # the rows are gone; the store's fault is logged

    assert repository.deletes_of(sha256).running == 1
    _upload(uploading, fake_image("shared bytes"), "say more")
    assert store.lookups == 1


def test_a_delete_that_died_is_counted_finished_by_a_delete_an_hour_later() -> None:
    clock = ShiftedClock()
    repository = InMemoryCaptionRepository(clock=clock)
    store, deleting, uploading, sha256, _ = _one_image_stored(repository)
    repository.begin_delete(sha256)  # its replica was killed mid-delete
    clock.advance(DELETE_STALE_S + 1)

    deleting.delete(_upload(deleting, fake_image("other bytes")))
    _upload(uploading, fake_image("shared bytes"), "say more")

    assert repository.deletes_of(sha256).running == 0
    assert store.lookups == 0


def test_marks_are_read_without_a_call_of_their_own_on_the_caption_path() -> None:
    repository = InMemoryCaptionRepository()
    _, _, uploading = _replicas(repository)

    _upload(uploading, fake_image("new bytes"))

    assert repository.marks_read == 2  # with the claim, and once after the commit


def test_the_file_may_be_gone_only_when_a_delete_was_in_flight_or_began_meanwhile() -> None:
    quiet = DeletesSeen(0, "t1", 100.0)

    assert not file_may_be_gone(quiet, DeletesSeen(0, "t1", 101.0))
    assert not file_may_be_gone(DeletesSeen(0, "", 100.0), DeletesSeen(0, "", 101.0))
    assert file_may_be_gone(DeletesSeen(1, "t1", 100.0), DeletesSeen(0, "t1", 101.0))
    assert file_may_be_gone(quiet, DeletesSeen(0, "t2", 101.0))  # began and finished between
    assert file_may_be_gone(quiet, DeletesSeen(1, "t2", 101.0))
    assert file_may_be_gone(quiet, DeletesSeen(0, "", 101.0))  # its mark was dropped
    assert file_may_be_gone(quiet, DeletesSeen.unknown())
    assert file_may_be_gone(DeletesSeen.unknown(), quiet)
    # Longer than a finished mark is kept could hide one that came and went.
    assert file_may_be_gone(quiet, DeletesSeen(0, "t1", 100.0 + DELETE_MARKS_KEPT_S))


def test_a_recaption_that_read_the_file_before_a_delete_does_not_bring_the_image_back() -> None:
    store, deleting, recaptioning = _replicas()
    first = _upload(deleting, fake_image("shared bytes"))
    listed = recaptioning.get(first)
    store.after_open = lambda: deleting.delete(first)  # just after the re-caption read it

    with pytest.raises(ImageNotFound, match="deleted while this ran"):
        recaptioning.recaption(listed, prompt="say more")

    assert recaptioning.list().entries == ()
    assert store.files == {}


def test_a_recaption_keeps_its_caption_when_the_image_has_others() -> None:
    store, _, recaptioning = _replicas()
    first = _upload(recaptioning, fake_image("shared bytes"))

    made = recaptioning.recaption(recaptioning.get(first), prompt="say more")

    assert [r.id for r in recaptioning.captions(first)] == [first, made.record.id]
    assert _has_its_file(store, recaptioning, made.record.id)
