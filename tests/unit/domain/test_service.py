"""The service's rules, with every port faked in memory (no torch, no disk)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.domain.errors import (
    CaptionerUnavailable,
    CaptioningFailed,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    UnsupportedImageType,
)
from captioner.domain.model import ImageDigest, ImageRecord, ImageUpload
from captioner.domain.rules import clean_original_name
from captioner.domain.service import CaptionService
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    World,
    fake_image,
)


@pytest.fixture
def world() -> World:
    return World()


def test_first_upload_runs_the_model_and_keeps_image_and_caption(world: World) -> None:
    result = world.service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "cat.jpg"))

    assert not result.duplicate
    assert result.record.description.startswith("a picture of")
    assert world.captioner.call_count == 1
    assert world.store.files[result.record.path] == fake_image("cat")
    assert world.repository.get(result.record.id) == result.record
    assert result.record.original_name == "cat.jpg"


def test_second_upload_of_same_bytes_reuses_caption_without_the_model(world: World) -> None:
    first = world.service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "a.jpg"))
    second = world.service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "b.jpg"))

    assert second.duplicate
    assert second.record == first.record
    assert world.captioner.call_count == 1


def test_different_bytes_with_the_same_filename_are_two_records(world: World) -> None:
    one = world.service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "photo.jpg"))
    two = world.service.describe(ImageUpload(io.BytesIO(fake_image("dog")), "photo.jpg"))

    assert one.record.id != two.record.id
    assert one.record.path != two.record.path
    assert world.store.files[one.record.path] == fake_image("cat")
    assert world.store.files[two.record.path] == fake_image("dog")


def test_same_bytes_with_another_prompt_is_described_again(world: World) -> None:
    plain = world.service.describe(ImageUpload(io.BytesIO(fake_image("cat"))))
    prompted = world.service.describe(
        ImageUpload(io.BytesIO(fake_image("cat")), prompt="a photograph of")
    )

    assert not prompted.duplicate
    assert prompted.record.description.startswith("a photograph of")
    assert prompted.record.path == plain.record.path
    assert world.captioner.call_count == 2


def test_listing_is_newest_first_with_a_cursor_for_the_next_page(world: World) -> None:
    ids = [
        world.service.describe(ImageUpload(io.BytesIO(fake_image(str(i))))).record.id
        for i in range(5)
    ]

    first = world.service.list(limit=2)
    second = world.service.list(limit=2, before=first.next_before)
    last = world.service.list(limit=2, before=second.next_before)

    assert [r.id for r in first.records] == ids[::-1][:2]
    assert [r.id for r in second.records] == ids[::-1][2:4]
    assert [r.id for r in last.records] == ids[:1]
    assert last.next_before is None


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_list_limit_out_of_range_is_refused(world: World, limit: int) -> None:
    with pytest.raises(InvalidRequest):
        world.service.list(limit=limit)


def test_non_image_bytes_are_refused_and_nothing_is_stored(world: World) -> None:
    with pytest.raises(UnsupportedImageType):
        world.service.describe(ImageUpload(io.BytesIO(b"<?php echo 1; ?>"), "x.jpg"))
    with pytest.raises(InvalidImage):
        world.service.describe(ImageUpload(io.BytesIO(b""), "empty.png"))

    assert world.store.files == {}
    assert world.repository.rows == {}
    assert world.captioner.call_count == 0


def test_upload_over_the_byte_limit_is_refused_before_decoding() -> None:
    world = World(max_upload_bytes=10)
    with pytest.raises(ImageTooLarge):
        world.service.describe(ImageUpload(io.BytesIO(fake_image("x" * 20))))
    assert world.store.files == {}


def test_model_failure_stores_nothing_and_the_next_upload_works(world: World) -> None:
    world.captioner.fail_on.add(fake_image("bad"))

    with pytest.raises(CaptioningFailed):
        world.service.describe(ImageUpload(io.BytesIO(fake_image("bad"))))
    good = world.service.describe(ImageUpload(io.BytesIO(fake_image("good"))))

    assert list(world.store.files) == [good.record.path]
    assert list(world.repository.rows) == [good.record.id]


def test_delete_removes_the_image_with_every_caption_and_its_file(world: World) -> None:
    plain = world.service.describe(ImageUpload(io.BytesIO(fake_image("cat"))))
    prompted = world.service.describe(ImageUpload(io.BytesIO(fake_image("cat")), prompt="a"))
    other = world.service.describe(ImageUpload(io.BytesIO(fake_image("dog"))))

    world.service.delete(plain.record.id)

    assert not world.store.exists(prompted.record.path)
    assert world.service.list().records == (other.record,)
    with pytest.raises(ImageNotFound):
        world.service.delete(prompted.record.id)


def test_concurrent_uploads_of_the_same_new_bytes_run_the_model_once() -> None:
    world = World(delay_s=0.2)
    results = []
    barrier = threading.Barrier(16)

    def upload() -> None:
        barrier.wait()
        results.append(world.service.describe(ImageUpload(io.BytesIO(fake_image("same")))))

    threads = [threading.Thread(target=upload) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert world.captioner.call_count == 1
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.record.id for r in results}) == 1


def test_check_finds_and_repairs_orphans_missing_files_and_changed_bytes(world: World) -> None:
    kept = world.service.describe(ImageUpload(io.BytesIO(fake_image("kept"))))
    lost = world.service.describe(ImageUpload(io.BytesIO(fake_image("lost"))))
    changed = world.service.describe(ImageUpload(io.BytesIO(fake_image("changed"))))
    world.store.files.pop(lost.record.path)
    world.store.files[changed.record.path] = b"tampered"
    world.store.files["uploads/00/00/orphan.png"] = b"orphan"

    report = world.service.check()
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["hash_mismatch", "missing_file", "orphan_file"]

    world.service.check(repair=True)
    assert world.service.check().ok
    assert list(world.repository.rows) == [kept.record.id]


def test_readiness_says_why_when_the_model_is_not_loaded(world: World) -> None:
    from captioner.domain.model import Readiness

    world.captioner.ready = Readiness(False, "model x could not be loaded: no network")
    readiness = world.service.readiness()
    assert not readiness.ready
    assert "no network" in readiness.reason


def test_waiting_for_a_model_that_failed_to_load_raises_a_permanent_unavailable(
    world: World,
) -> None:
    from captioner.domain.model import Readiness

    reason = "model x could not be loaded: no such model directory: /x -- set CAPTIONER_MODEL"
    world.captioner.ready = Readiness(False, reason, permanent=True)

    with pytest.raises(CaptionerUnavailable) as failed:
        world.service.wait_until_ready(timeout=1)

    assert str(failed.value) == reason
    assert failed.value.retry_after_s is None
    assert world.service.readiness().permanent


def test_waiting_past_the_timeout_for_a_loading_model_returns_not_ready(world: World) -> None:
    from captioner.domain.model import Readiness

    world.captioner.ready = Readiness(False, "model x is loading")

    readiness = world.service.wait_until_ready(timeout=0.01)

    assert not readiness.ready
    assert not readiness.permanent
    assert "loading" in readiness.reason


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Windows\\system32\\evil.jpg", "evil.jpg"),
        ("a\x00b.png", "ab.png"),
        ("x" * 2000, "x" * 255),
        ("..", None),
        ("", None),
        ("фото.jpg", "фото.jpg"),
    ],
)
def test_original_names_are_kept_as_sanitised_metadata(given: str, kept: str | None) -> None:
    assert clean_original_name(given) == kept


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"b", b"c", b"d", b"e"]), max_size=12))
def test_captioner_runs_once_per_distinct_bytes_for_any_upload_sequence(
    contents: list[bytes],
) -> None:
    world = World()
    for content in contents:
        world.service.describe(ImageUpload(io.BytesIO(fake_image(content)), "same-name.jpg"))

    distinct = len(set(contents))
    assert world.captioner.call_count == distinct
    assert len(world.service.list(limit=1000).records) == distinct
    assert len(world.store.files) == distinct


def test_service_container_and_http_app_import_without_torch() -> None:
    # The model stack is heavy: it must load only when a real captioner is built.
    code = (
        "import sys, captioner, captioner.container, captioner.entrypoints.http, "
        "captioner.entrypoints.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


class CatalogueFilledAfterFirstLookup(InMemoryCaptionRepository):
    """The first lookup misses, and another run stores the record right after it: the race
    between a finishing run and a new request taking the lead."""

    def __init__(self, filled_by: World, content: bytes) -> None:
        super().__init__()
        self._filled_by = filled_by
        self._content = content
        self._looked_up = False

    def find(self, sha256: str, model: str, prompt: str) -> ImageRecord | None:
        if not self._looked_up:
            self._looked_up = True
            self._filled_by.upload(self._content)
            self.rows.update(self._filled_by.repository.rows)
            return None
        return super().find(sha256, model, prompt)


def test_a_run_finishing_just_before_another_takes_the_lead_is_not_repeated() -> None:
    other = World()
    captioner = FakeCaptioner()
    repository = CatalogueFilledAfterFirstLookup(other, fake_image("cat"))
    service = CaptionService(captioner, FakeImageDecoder(), InMemoryImageStore(), repository)

    result = service.describe(ImageUpload(io.BytesIO(fake_image("cat"))))

    assert result.duplicate
    assert captioner.call_count == 0


def test_check_leaves_alone_a_young_file_whose_row_is_not_committed_yet(world: World) -> None:
    from captioner.domain.model import ImageDigest

    # An upload in flight: its file is written, its row not yet committed.
    in_flight = world.store.save(ImageDigest.of_bytes(b"new"), io.BytesIO(b"new"), "png")

    report = world.service.check(repair=True)

    assert report.ok
    assert world.store.exists(in_flight)
    assert not world.service.check(orphan_grace_s=0).ok


class StoreThatPausesWhileDeleting(InMemoryImageStore):
    """Holds a delete open for a moment, so a concurrent upload of the same bytes can race it."""

    def __init__(self) -> None:
        super().__init__()
        self.deleting = threading.Event()
        self.saved_during_delete = threading.Event()

    def save(
        self,
        digest: ImageDigest,
        content: BinaryIO,
        extension: str,
        local_path: str | None = None,
    ) -> str:
        if self.deleting.is_set():
            self.saved_during_delete.set()
        return super().save(digest, content, extension, local_path)

    def delete(self, path: str) -> None:
        self.deleting.set()
        self.saved_during_delete.wait(timeout=0.3)  # without the service's lock, a save lands here
        super().delete(path)
        self.deleting.clear()


def test_deleting_while_the_same_bytes_are_uploaded_never_leaves_a_row_without_its_file() -> None:
    store = StoreThatPausesWhileDeleting()
    repository = InMemoryCaptionRepository()
    service = CaptionService(FakeCaptioner(), FakeImageDecoder(), store, repository)
    first = service.describe(ImageUpload(io.BytesIO(fake_image("cat"))))

    deleter = threading.Thread(target=service.delete, args=(first.record.id,))
    deleter.start()
    store.deleting.wait(timeout=5)
    again = service.describe(ImageUpload(io.BytesIO(fake_image("cat")), prompt="another"))
    deleter.join()

    assert not store.saved_during_delete.is_set()
    assert store.exists(again.record.path)
    assert all(store.exists(record.path) for record in repository.rows.values())


@pytest.mark.parametrize("image_id", [0, -1, 2**63, 10**20])
def test_ids_no_image_can_have_are_not_found(world: World, image_id: int) -> None:
    with pytest.raises(ImageNotFound):
        world.service.get(image_id)
    with pytest.raises(ImageNotFound):
        world.service.delete(image_id)


@pytest.mark.parametrize("before", [0, -1])
def test_a_cursor_no_image_can_be_below_is_refused(world: World, before: int) -> None:
    with pytest.raises(InvalidRequest):
        world.service.list(before=before)


def test_an_upload_handed_over_part_read_is_still_hashed_decoded_and_stored_whole(
    world: World,
) -> None:
    content = io.BytesIO(fake_image("cat"))
    content.seek(0, io.SEEK_END)  # the fakes read from where the stream stands

    result = world.service.describe(ImageUpload(content, "cat.png"))

    assert result.record.sha256 == ImageDigest.of_bytes(fake_image("cat")).hex
    assert world.store.files[result.record.path] == fake_image("cat")


def test_a_spooled_upload_offers_its_file_to_the_store(world: World) -> None:
    world.service.describe(
        ImageUpload(io.BytesIO(fake_image("cat")), "cat.png", local_path="/spool/cat")
    )

    assert world.store.local_paths == ["/spool/cat"]
