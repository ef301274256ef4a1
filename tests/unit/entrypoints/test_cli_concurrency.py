"""`caption` and `recaption` run their items through one helper: results in input order,
failures counted, a bounded number in flight."""

from __future__ import annotations

import argparse
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from captioner.config import Settings
from captioner.domain.model import ImageUpload
from captioner.domain.service import CaptionService
from captioner.entrypoints.cli.describe import _recaption_all, run_concurrently
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)


def test_outcomes_are_reported_in_input_order_and_failures_counted() -> None:
    in_flight, most = 0, 0
    lock = threading.Lock()

    def work(item: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.002 * (10 - item))  # later items finish first
        with lock:
            in_flight -= 1
        if item % 4 == 3:
            raise ValueError(f"item {item} broke")
        return item * item

    reported: list[tuple[int, int | Exception]] = []
    failed = run_concurrently(range(10), work, lambda i, o: reported.append((i, o)), workers=2)

    assert [item for item, _ in reported] == list(range(10))
    assert [o for _, o in reported if not isinstance(o, Exception)] == [0, 1, 4, 16, 25, 36, 64, 81]
    assert [str(o) for _, o in reported if isinstance(o, Exception)] == [
        "item 3 broke",
        "item 7 broke",
    ]
    assert failed == 2
    assert most <= 2


def test_an_outcome_returned_as_an_exception_counts_as_a_failure() -> None:
    failed = run_concurrently(
        ["a", "b"], lambda item: OSError(item) if item == "b" else item, lambda *_: None, 1
    )

    assert failed == 1


def test_no_more_than_two_items_per_worker_are_drawn_ahead_of_the_reports() -> None:
    drawn = 0

    def items() -> Iterator[int]:
        nonlocal drawn
        for item in range(100):
            drawn += 1
            yield item

    ahead: list[int] = []
    run_concurrently(items(), lambda item: item, lambda item, _: ahead.append(drawn - item), 3)

    assert max(ahead) <= 2 * 3


class DeletingStore(InMemoryImageStore):
    """A store in use by a server: reading one file, it sees another image deleted."""

    def __init__(self) -> None:
        super().__init__()
        self.on_open: dict[str, Callable[[], object]] = {}

    def open(self, path: str) -> BinaryIO:
        step = self.on_open.pop(path, None)
        if step is not None:
            step()
        return super().open(path)


def test_a_recaption_skips_images_deleted_while_it_runs_and_still_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, repository = DeletingStore(), InMemoryCaptionRepository()

    def service(model: str) -> CaptionService:
        return CaptionService(FakeCaptioner(model), FakeImageDecoder(), store, repository)

    old = service("old-model")
    first, second = (
        old.describe(ImageUpload(io.BytesIO(fake_image(name)), f"{name}.jpg")).record
        for name in ("cat", "dog")
    )
    store.on_open[first.path] = lambda: old.delete(second.id)
    settings = Settings(data_dir=tmp_path, model="new-model", max_batch=1)
    args = argparse.Namespace(limit=None, json=False, replace_edits=False)

    code = _recaption_all(service("new-model"), settings, args)

    assert code == 0
    assert f"Image {second.id} was deleted while this ran" in capsys.readouterr().err
    assert repository.find(first.sha256, "new-model", "") is not None
    assert repository.find(second.sha256, "new-model", "") is None
