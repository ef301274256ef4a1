"""The claims' lease renewals: one thread renews every claim held in the process while its
work goes on, and stops with the work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from captioner.domain.errors import CatalogueUnavailable
from captioner.domain.model import CaptionKey, Claim
from captioner.domain.one_run_per_key import LeaseRenewals
from tests.support.fakes import InMemoryCaptionRepository

LEASE_S = 0.15  # renewed every 0.05 s
WAIT = 5.0  # generous bound for "soon" on a loaded machine; never reached when things work


def claimed(catalogue: InMemoryCaptionRepository, name: str) -> Claim:
    claim = catalogue.claim(CaptionKey(name * 64, "m", ""), LEASE_S)
    assert claim is not None
    return claim


def renewal_threads(before: set[threading.Thread]) -> int:
    """Renewal threads alive now that were not there ``before`` (earlier tests' may linger)."""
    return sum(
        thread.name == "captioner-claim-leases" and thread not in before
        for thread in threading.enumerate()
    )


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


class CountingRenewals(InMemoryCaptionRepository):
    """Counts the renewals of each claim; fails the first ``failures`` with the catalogue
    unreachable."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.per_owner: dict[str, int] = {}
        self.failures = failures

    def renew(self, claim: Claim, lease_s: float) -> bool:
        if self.failures:
            self.failures -= 1
            raise CatalogueUnavailable("the database restarts")
        kept = super().renew(claim, lease_s)
        self.per_owner[claim.owner] = self.per_owner.get(claim.owner, 0) + 1
        return kept


def test_a_claim_is_renewed_while_kept_and_no_longer_once_its_work_ends() -> None:
    catalogue = CountingRenewals()
    renewals = LeaseRenewals(catalogue, LEASE_S)
    claim = claimed(catalogue, "a")
    before = set(threading.enumerate())

    with renewals.kept([claim]):
        wait_for(lambda: catalogue.per_owner.get(claim.owner, 0) >= 3)
    ended_at = catalogue.per_owner[claim.owner]
    time.sleep(LEASE_S)

    assert catalogue.per_owner[claim.owner] <= ended_at + 1  # at most one renewal in flight
    wait_for(lambda: renewal_threads(before) == 0)  # nothing held: the thread ends


def test_many_captions_at_once_share_one_renewal_thread() -> None:
    catalogue = CountingRenewals()
    renewals = LeaseRenewals(catalogue, LEASE_S)
    claims = [claimed(catalogue, letter) for letter in "abcdefgh"]
    everyone_in = threading.Barrier(len(claims) + 1)
    done = threading.Event()
    before = set(threading.enumerate())

    def caption(claim: Claim) -> None:
        with renewals.kept([claim]):
            everyone_in.wait(WAIT)
            assert done.wait(WAIT)

    with ThreadPoolExecutor(len(claims)) as pool:
        running = [pool.submit(caption, claim) for claim in claims]
        everyone_in.wait(WAIT)
        wait_for(lambda: all(catalogue.per_owner.get(claim.owner, 0) >= 2 for claim in claims))
        threads_while_held = renewal_threads(before)
        done.set()
        for future in running:
            future.result(WAIT)

    assert threads_while_held == 1


def test_a_claim_taken_over_is_no_longer_renewed() -> None:
    catalogue = CountingRenewals()
    renewals = LeaseRenewals(catalogue, LEASE_S)
    claim = claimed(catalogue, "a")
    other = claimed(catalogue, "b")
    catalogue.claims[claim.key] = ("another owner", time.monotonic() + 60)

    with renewals.kept([claim, other]):
        wait_for(lambda: catalogue.per_owner.get(other.owner, 0) >= 3)

    assert catalogue.per_owner[claim.owner] == 1  # refused once, then dropped


def test_renewals_go_on_after_the_catalogue_was_unreachable_for_a_moment() -> None:
    catalogue = CountingRenewals(failures=2)
    renewals = LeaseRenewals(catalogue, LEASE_S)
    claim = claimed(catalogue, "a")

    with renewals.kept([claim]):
        wait_for(lambda: catalogue.per_owner.get(claim.owner, 0) >= 2)

    assert catalogue.failures == 0


def test_work_after_the_thread_ended_starts_renewals_again() -> None:
    catalogue = CountingRenewals()
    renewals = LeaseRenewals(catalogue, LEASE_S)
    first, second = claimed(catalogue, "a"), claimed(catalogue, "b")
    before = set(threading.enumerate())
    with renewals.kept([first]):
        wait_for(lambda: catalogue.per_owner.get(first.owner, 0) >= 1)
    wait_for(lambda: renewal_threads(before) == 0)

    with renewals.kept([second]):
        wait_for(lambda: catalogue.per_owner.get(second.owner, 0) >= 2)
