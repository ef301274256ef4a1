"""Two replicas over one catalogue and one store: a delete never takes a new record's file."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

from captioner.domain.model import ImageDigest, ImageUpload
from captioner.domain.service import CaptionService
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
        self.before_delete: Callable[[], None] | None = None
        self.after_save: Callable[[], None] | None = None
        self.after_open: Callable[[], None] | None = None

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

    def delete(self, path: str) -> None:
        step, self.before_delete = self.before_delete, None
        if step is not None:
            step()
        super().delete(path)


def _replicas() -> tuple[InterleavingStore, CaptionService, CaptionService]:
    store, repository = InterleavingStore(), InMemoryCaptionRepository()

    def replica() -> CaptionService:
        return CaptionService(
            FakeCaptioner(), FakeImageDecoder(), store, repository, max_upload_bytes=1000
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
