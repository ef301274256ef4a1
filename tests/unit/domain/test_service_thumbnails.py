"""Thumbnails through the service: made once per distinct bytes, removed with the last record."""

from __future__ import annotations

import pytest

from captioner.domain.errors import ImageNotFound, InvalidImage
from captioner.domain.model import ImageDigest
from tests.support.fakes import (
    World,
    fake_image,
)


@pytest.fixture
def world() -> World:
    return World()


def test_first_thumbnail_request_makes_it_and_later_ones_reuse_it(world: World) -> None:
    image_id = world.add(fake_image("cat"))

    record, first = world.service.open_thumbnail(image_id)
    _, second = world.service.open_thumbnail(image_id)

    assert first.content.read() == second.content.read() == b"THUMB:" + fake_image("cat")
    assert first.content_type == "image/webp"
    assert record.id == image_id
    assert world.thumbnails.made == 1


@pytest.mark.parametrize("already_made", [False, True])
def test_a_thumbnail_request_reads_the_record_once_and_the_cache_once(
    world: World, already_made: bool
) -> None:
    image_id = world.add(fake_image("cat"))
    if already_made:
        world.service.open_thumbnail(image_id)
    gets, lookups = world.repository.gets, world.thumbnails.lookups

    _, preview = world.service.open_thumbnail(image_id)

    assert preview.content.read() == b"THUMB:" + fake_image("cat")
    assert world.repository.gets - gets == 1
    assert world.thumbnails.lookups - lookups == 1


def test_records_of_the_same_bytes_share_one_thumbnail(world: World) -> None:
    plain = world.add(fake_image("cat"))
    prompted = world.add(fake_image("cat"), prompt="a photograph of")

    world.service.open_thumbnail(plain)
    world.service.open_thumbnail(prompted)

    assert plain != prompted
    assert world.thumbnails.made == 1


def test_deleting_the_last_record_of_the_bytes_removes_its_thumbnail(world: World) -> None:
    image_id = world.add(fake_image("cat"))
    record, _ = world.service.open_thumbnail(image_id)

    world.service.delete(image_id)

    assert world.thumbnails.files == {}
    assert world.store.files == {}
    with pytest.raises(ImageNotFound):
        world.service.open_thumbnail(image_id)
    assert ImageDigest(record.sha256) not in set(world.thumbnails.digests())


def test_deleting_an_image_with_two_captions_removes_its_thumbnail(world: World) -> None:
    plain = world.add(fake_image("cat"))
    prompted = world.add(fake_image("cat"), prompt="a photograph of")
    world.service.open_thumbnail(plain)

    world.service.delete(plain)

    assert world.thumbnails.files == {}
    with pytest.raises(ImageNotFound):
        world.service.open_thumbnail(prompted)


def test_thumbnail_of_an_unknown_image_is_not_found(world: World) -> None:
    with pytest.raises(ImageNotFound):
        world.service.open_thumbnail(42)


def test_thumbnail_of_an_image_whose_file_is_gone_is_not_found(world: World) -> None:
    image_id = world.add(fake_image("cat"))
    world.store.files.clear()

    with pytest.raises(ImageNotFound, match="missing"):
        world.service.open_thumbnail(image_id)


def test_an_original_that_cannot_be_shrunk_is_an_invalid_image(world: World) -> None:
    image_id = world.add(fake_image("cat"))
    path = world.service.get(image_id).path
    world.store.files[path] = b"not an image any more"

    with pytest.raises(InvalidImage):
        world.service.open_thumbnail(image_id)


def test_without_a_thumbnail_store_the_original_stands_in() -> None:
    world = World(with_thumbnails=False)
    image_id = world.add(fake_image("cat"))

    _, preview = world.service.open_thumbnail(image_id)

    assert preview.content.read() == fake_image("cat")
    assert preview.content_type == "image/png"


def test_check_finds_a_thumbnail_no_record_uses_and_repair_removes_it(world: World) -> None:
    kept = world.add(fake_image("kept"))
    world.service.open_thumbnail(kept)
    stray = ImageDigest.of_bytes(b"bytes of an image deleted long ago")
    world.thumbnails.files[stray.hex] = b"THUMB:old"

    found = world.service.check()
    world.service.check(repair=True)

    assert [(p.kind, p.path) for p in found.problems] == [("orphan_thumbnail", stray.hex)]
    assert world.service.check().ok
    assert set(world.thumbnails.digests()) == {ImageDigest(world.service.get(kept).sha256)}


def test_repairing_a_record_whose_bytes_changed_removes_file_and_thumbnail(world: World) -> None:
    image_id = world.add(fake_image("cat"))
    record, _ = world.service.open_thumbnail(image_id)
    world.store.files[record.path] = b"tampered"

    world.service.check(repair=True)

    assert world.store.files == {}
    assert world.thumbnails.files == {}
    assert world.service.check().ok


def test_repairing_a_record_whose_file_is_gone_removes_its_thumbnail(world: World) -> None:
    image_id = world.add(fake_image("cat"))
    record, _ = world.service.open_thumbnail(image_id)
    del world.store.files[record.path]

    world.service.check(repair=True)

    assert world.thumbnails.files == {}
    assert world.repository.rows == {}


def test_repair_keeps_the_file_and_thumbnail_another_record_still_uses(world: World) -> None:
    plain = world.add(fake_image("cat"))
    world.add(fake_image("cat"), prompt="a photograph of")
    world.service.open_thumbnail(plain)
    world.repository.corrupt(plain, sha256="0" * 64)  # this record no longer matches its file

    world.service.check(repair=True)

    assert len(world.repository.rows) == 1
    assert len(world.store.files) == 1
    assert len(world.thumbnails.files) == 1
    assert world.service.check().ok
