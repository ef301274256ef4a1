"""The caption queue in the domain: submit at once, workers caption later, failures retried
then kept with their reason, model-less services waiting on workers; fakes of every port."""

from __future__ import annotations

import io
import threading

import pytest

from captioner.domain.caption_queue import QueuePolicy
from captioner.domain.errors import CaptionerBusy, CaptionerUnavailable, InvalidRequest
from captioner.domain.model import CAPTIONED, FAILED, PENDING, ImageUpload, Readiness
from captioner.domain.service import CaptionService
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    World,
    fake_image,
)

POLICY = QueuePolicy(max_attempts=3, retry_backoff_s=0.0, batch=4, poll_s=0.01, heartbeat_s=0.05)


def upload(data: bytes) -> ImageUpload:
    return ImageUpload(io.BytesIO(data), "photo.png")


def service_over(
    world: World,
    captions_here: bool = True,
    wait_s: float = 5.0,
    captioner: FakeCaptioner | None = None,
) -> CaptionService:
    """Another service (replica or worker) sharing ``world``'s catalogue and store."""
    return CaptionService(
        captioner or (FakeCaptioner() if captions_here else world.captioner),
        FakeImageDecoder(),
        world.store,
        world.repository,
        queue=world.repository,
        captions_here=captions_here,
        queue_policy=POLICY,
        claim_wait_s=wait_s,
    )


def work_until_empty(service: CaptionService) -> int:
    worker = service.queue_worker("test worker")
    stop = threading.Event()
    total = 0
    # One round at a time in this thread, until a round finds nothing due.
    while taken := worker.work.round():
        total += taken
    worker.run(stop_now(stop))
    return total


def stop_now(stop: threading.Event) -> threading.Event:
    stop.set()
    return stop


def test_a_submitted_image_is_kept_pending_at_once_and_a_worker_captions_it() -> None:
    world = World()
    image = fake_image("cat")

    queued = world.service.submit(upload(image))
    worker = service_over(world)
    captioned = work_until_empty(worker)
    again = world.service.submit(upload(image))

    assert queued.record.status == PENDING
    assert queued.record.description == ""
    assert not queued.duplicate
    assert world.captioner.call_count == 0
    assert world.store.exists(queued.record.path)
    assert captioned == 1
    assert again.duplicate
    assert again.record.status == CAPTIONED
    assert again.record.id == queued.record.id
    assert again.record.description


def test_a_poison_image_fails_after_max_attempts_and_the_others_are_captioned() -> None:
    world = World()
    model = FakeCaptioner()
    worker = service_over(world, captioner=model)
    poison = fake_image("poison")
    model.fail_on.add(poison)
    ids = [world.service.submit(upload(fake_image(f"ok {n}"))).record.id for n in range(6)]
    bad = world.service.submit(upload(poison)).record.id

    work_until_empty(worker)

    failed = world.service.get(bad)
    assert (failed.status, failed.attempts) == (FAILED, 3)
    assert failed.failure
    assert {world.service.get(i).status for i in ids} == {CAPTIONED}
    assert [r.id for r in world.service.jobs()] == [bad]
    assert world.service.retry(bad) == 1
    assert world.service.get(bad).status == PENDING


def test_a_sync_upload_refused_while_the_model_is_down_stays_queued_for_its_retry() -> None:
    world = World()
    world.captioner.ready = Readiness(False, "model server down")
    image = fake_image("dog")

    with pytest.raises(CaptionerUnavailable):
        world.upload(image)
    world.captioner.ready = Readiness.ok()
    queued = world.service.jobs()
    work_until_empty(world.service)
    retried = world.upload(image)

    assert [r.status for r in queued] == [PENDING]
    assert retried.duplicate
    assert retried.record.id == queued[0].id
    assert world.captioner.call_count == 1


def test_a_model_less_service_answers_a_sync_upload_with_a_workers_caption() -> None:
    world = World()
    api = service_over(world, captions_here=False)
    worker = service_over(world).queue_worker("worker")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        result = api.describe(upload(fake_image("bird")))
    finally:
        stop.set()
        thread.join()

    assert result.record.status == CAPTIONED
    assert result.record.description
    assert not result.duplicate
    assert world.captioner.call_count == 0  # the api's own captioner never ran


def test_without_a_worker_a_model_less_sync_upload_is_a_503_and_stays_queued() -> None:
    world = World()
    api = service_over(world, captions_here=False, wait_s=0.05)

    with pytest.raises(CaptionerBusy) as refused:
        api.describe(upload(fake_image("fish")))

    assert refused.value.retry_after_s is not None
    assert [r.status for r in api.jobs()] == [PENDING]
    assert not api.readiness().ready
    assert "no queue worker is alive" in api.readiness().reason


def test_readiness_names_the_queue_when_it_is_stuck() -> None:
    world = World()
    stuck = CaptionService(
        world.captioner,
        FakeImageDecoder(),
        world.store,
        world.repository,
        queue=world.repository,
        queue_policy=QueuePolicy(stuck_s=0.0),
    )
    stuck.submit(upload(fake_image("old")))

    readiness = stuck.readiness()

    assert not readiness.ready
    assert "caption queue is stuck: 1 pending" in readiness.reason


def test_cancelling_a_pending_caption_drops_its_record_and_file() -> None:
    world = World()
    queued = world.service.submit(upload(fake_image("gone"))).record

    world.service.cancel(queued.id)

    assert world.service.jobs() == []
    assert not world.store.exists(queued.path)
    with pytest.raises(InvalidRequest):
        world.service.retry(world.add(fake_image("fine")))  # captioned: nothing to retry


def test_the_heartbeat_shows_a_running_worker_in_the_status() -> None:
    repository = InMemoryCaptionRepository()
    service = CaptionService(
        FakeCaptioner(),
        FakeImageDecoder(),
        InMemoryImageStore(),
        repository,
        queue=repository,
        queue_policy=POLICY,
    )
    worker = service.queue_worker("beating")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        for _ in range(100):
            if service.queue_status().workers:
                break
            stop.wait(0.01)
        alive = [w.name for w in service.queue_status().workers]
    finally:
        stop.set()
        thread.join()

    assert alive == ["beating"]
    assert service.queue_status().workers == ()  # a clean stop forgets it
