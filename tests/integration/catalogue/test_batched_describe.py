"""describe_many through the container on a real catalogue (SQLite, PostgreSQL) and store:
the upload's rules for a batch, one model run per distinct new image across writers."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers

from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.errors import CaptioningFailed, UnsupportedImageType
from captioner.domain.model import Description, ImageUpload
from tests.support.fakes import FakeCaptioner, FakeImageDecoder, fake_image
from tests.support.prometheus import sample

WAIT = 10.0  # generous bound for "soon" on a loaded machine; never reached when things work


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    return Settings(data_dir=tmp_path / "data", database_url=url, claim_lease_s=5.0)


@pytest.fixture
def writers(settings: Settings) -> Iterator[list[tuple[Container, FakeCaptioner]]]:
    """Two processes' worth of service on the same catalogue and store, each with its own
    counting model."""
    made = []
    for _ in range(2):
        container = build_container(settings)
        captioner = FakeCaptioner()
        container.captioner.override(providers.Object(captioner))
        container.image_decoder.override(providers.Object(FakeImageDecoder()))
        made.append((container, captioner))
    yield made
    for container, _ in made:
        container.shutdown_resources()


def uploads(*images: bytes) -> list[ImageUpload]:
    return [ImageUpload(io.BytesIO(data), f"{n}.png") for n, data in enumerate(images)]


def described(outcome: Description | Exception) -> Description:
    assert isinstance(outcome, Description), outcome
    return outcome


def test_a_batch_gives_each_image_the_outcome_describe_would_and_runs_each_new_one_once(
    writers: list[tuple[Container, FakeCaptioner]],
) -> None:
    (bulk, model), (api, api_model) = writers
    service = bulk.service()
    known, new, twice, broken = (fake_image(name) for name in ("known", "new", "twice", "broken"))
    held = fake_image("uploaded by another writer meanwhile")
    before = service.describe(uploads(known)[0])
    model.fail_on.add(broken)
    api_model.delay_s = 0.5
    answer: list[Description] = []
    upload = threading.Thread(
        target=lambda: answer.append(api.service().describe(uploads(held)[0]))
    )
    upload.start()
    deadline = time.monotonic() + WAIT
    while api_model.call_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the other writer holds the claim and runs the model

    outcomes = service.describe_many(
        uploads(known, new, twice, held, twice, broken, b"not an image", new), batch=4
    )
    upload.join()

    first_known, first_new, first_twice, by_other, again, failed, refused, new_again = outcomes
    assert described(first_known).duplicate
    assert described(first_known).record == before.record
    assert not described(first_new).duplicate
    assert described(new_again).duplicate
    assert described(new_again).record == described(first_new).record
    assert not described(first_twice).duplicate
    assert described(again).record == described(first_twice).record
    assert described(by_other).duplicate
    assert described(by_other).record == answer[0].record
    assert isinstance(failed, CaptioningFailed)
    assert isinstance(refused, UnsupportedImageType)
    runs = [p for p, _ in model.calls]
    assert sorted(runs) == sorted([known, new, twice, broken])  # one each; none of held
    assert [p for p, _ in api_model.calls] == [held]
    records = list(service.export())
    assert len(records) == 4
    assert len({record.sha256 for record in records}) == 4
    store = bulk.image_store()
    assert all(store.exists(record.path) for record in records)
    metrics = bulk.metrics().exposition().decode()
    assert sample(metrics, "captioner_captions_generated_total") == 3  # known, new, twice
    # The failed image's claim was given back: the next try runs the model again.
    assert isinstance(service.describe_many(uploads(broken))[0], CaptioningFailed)
    assert model.calls.count((broken, "")) == 2


def test_two_writers_with_the_same_batches_at_once_run_the_model_once_per_image(
    writers: list[tuple[Container, FakeCaptioner]],
) -> None:
    images = [fake_image(f"shared {n}") for n in range(24)]
    for _, model in writers:
        model.delay_s = 0.02
    results: list[list[Description | Exception]] = [[], []]
    threads = [
        threading.Thread(
            target=lambda n=n: results[n].extend(
                writers[n][0].service().describe_many(uploads(*images), batch=8)
            )
        )
        for n in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(model.call_count for _, model in writers) == 24
    ids = [[described(o).record.id for o in batch] for batch in results]
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 24
    assert len(list(writers[0][0].service().export())) == 24
