"""One model run per key across replicas: services sharing one catalogue, with faked ports."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from captioner.domain.errors import CaptionerBusy, CaptioningFailed, UnsupportedImageType
from captioner.domain.model import (
    Caption,
    CaptionKey,
    Claim,
    DecodedImage,
    Description,
    ImageDigest,
    ImageUpload,
)
from captioner.domain.service import CaptionService
from tests.support.clocks import ShiftedClock
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)

CAT = fake_image("cat")
WAIT = 5.0  # generous bound for "soon" on a loaded machine; never reached when things work


class Replica:
    """One process of the service: its own model and in-process state, the shared catalogue."""

    def __init__(
        self,
        catalogue: InMemoryCaptionRepository,
        store: InMemoryImageStore,
        delay_s: float = 0.0,
        lease_s: float = 30.0,
        wait_s: float = 30.0,
        captioner: FakeCaptioner | None = None,
    ) -> None:
        self.captioner = captioner or FakeCaptioner(delay_s=delay_s)
        self.service = CaptionService(
            self.captioner,
            FakeImageDecoder(),
            store,
            catalogue,
            claim_lease_s=lease_s,
            claim_wait_s=wait_s,
        )

    def upload(self, data: bytes) -> Description:
        return self.service.describe(ImageUpload(io.BytesIO(data)))


def key_of(data: bytes) -> CaptionKey:
    return CaptionKey(ImageDigest.of_bytes(data).hex, "fake-model", "")


@pytest.fixture
def catalogue() -> InMemoryCaptionRepository:
    return InMemoryCaptionRepository()


@pytest.fixture
def store() -> InMemoryImageStore:
    return InMemoryImageStore()


def test_concurrent_uploads_to_several_replicas_run_the_model_once(
    catalogue: InMemoryCaptionRepository, store: InMemoryImageStore
) -> None:
    replicas = [Replica(catalogue, store, delay_s=0.2) for _ in range(3)]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda n: replicas[n % 3].upload(CAT), range(12)))

    assert sum(r.captioner.call_count for r in replicas) == 1
    assert [r.duplicate for r in results].count(False) == 1
    assert len({r.record.id for r in results}) == 1
    assert catalogue.claims == {}


def test_a_claim_left_by_a_dead_replica_is_taken_over_when_its_lease_runs_out(
    catalogue: InMemoryCaptionRepository, store: InMemoryImageStore
) -> None:
    assert catalogue.claim(key_of(CAT), lease_s=0.3) is not None  # its owner then died
    survivor = Replica(catalogue, store)

    started = time.monotonic()
    result = survivor.upload(CAT)

    assert not result.duplicate
    assert 0.2 < time.monotonic() - started < 3
    assert survivor.captioner.call_count == 1


def test_waiting_for_a_live_claim_is_bounded_and_says_when_to_retry(
    catalogue: InMemoryCaptionRepository, store: InMemoryImageStore
) -> None:
    assert catalogue.claim(key_of(CAT), lease_s=30) is not None  # a slow, live replica
    impatient = Replica(catalogue, store, wait_s=0.3)

    with pytest.raises(CaptionerBusy) as refused:
        impatient.upload(CAT)

    assert refused.value.retry_after_s is not None
    assert refused.value.retry_after_s >= 1
    assert impatient.captioner.call_count == 0
    assert catalogue.rows == {}


class HeldCaptioner(FakeCaptioner):
    """Describes only once the test lets it: a model run as long as the test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.running = threading.Event()
        self.release = threading.Event()

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        self.running.set()
        assert self.release.wait(WAIT), "the test never let the model finish"
        return super().describe(image, prompt)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        threading.Event().wait(0.001)


def test_the_lease_is_renewed_while_the_model_works(store: InMemoryImageStore) -> None:
    clock = ShiftedClock()
    catalogue = InMemoryCaptionRepository(clock=clock)
    slow = Replica(catalogue, store, lease_s=0.2, captioner=HeldCaptioner())
    other = Replica(catalogue, store, lease_s=0.2)
    first = threading.Thread(target=slow.upload, args=(CAT,))
    first.start()
    assert isinstance(slow.captioner, HeldCaptioner)
    assert slow.captioner.running.wait(WAIT)
    # Two leases pass while the model works; each step is shorter than a lease, and the
    # claimant renews after each, as it would over time.
    for _ in range(4):
        renewed = catalogue.renewals
        clock.advance(0.1)
        wait_for(lambda: catalogue.renewals > renewed)  # noqa: B023 - read at once

    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(other.upload, CAT)
        slow.captioner.release.set()
        first.join(WAIT)
        result = second.result(WAIT)

    assert result.duplicate
    assert slow.captioner.call_count + other.captioner.call_count == 1


def test_a_failed_run_gives_the_key_back_to_the_next_upload(
    catalogue: InMemoryCaptionRepository, store: InMemoryImageStore
) -> None:
    failing = Replica(catalogue, store)
    failing.captioner.fail_on.add(CAT)

    with pytest.raises(CaptioningFailed):
        failing.upload(CAT)
    assert catalogue.claims == {}

    retried = Replica(catalogue, store).upload(CAT)
    assert not retried.duplicate


def test_a_waiter_takes_over_when_the_claimant_fails(
    catalogue: InMemoryCaptionRepository, store: InMemoryImageStore
) -> None:
    failing = Replica(catalogue, store, delay_s=0.3)
    failing.captioner.fail_on.add(CAT)
    healthy = Replica(catalogue, store)

    failures: list[BaseException] = []

    def fail() -> None:
        try:
            failing.upload(CAT)
        except CaptioningFailed as error:
            failures.append(error)

    doomed = threading.Thread(target=fail)
    doomed.start()
    wait_for(lambda: key_of(CAT) in catalogue.claims)
    result = healthy.upload(CAT)
    doomed.join()

    assert len(failures) == 1
    assert not result.duplicate
    assert healthy.captioner.call_count == 1


class CountingCatalogue(InMemoryCaptionRepository):
    def __init__(self) -> None:
        super().__init__()
        self.claims_taken = 0

    def claim(self, key: CaptionKey, lease_s: float) -> Claim | None:
        self.claims_taken += 1
        return super().claim(key, lease_s)


def test_an_upload_that_is_not_an_image_is_refused_without_touching_the_catalogue(
    store: InMemoryImageStore,
) -> None:
    catalogue = CountingCatalogue()

    with pytest.raises(UnsupportedImageType):
        Replica(catalogue, store).upload(b"not an image")

    assert catalogue.claims_taken == 0
    assert catalogue.claims == {}
