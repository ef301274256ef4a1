"""The catalogue keeps provenance, migrates older SQLite databases, and answers the lookups
that the hash check, re-captioning and the captions list need (SQLite and PostgreSQL alike)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.domain.model import NewImageRecord, Provenance
from captioner.domain.ports import CaptionRepository


def new(sha: str, model: str = "m", prompt: str = "", **extra: object) -> NewImageRecord:
    record = NewImageRecord(
        sha256=sha * 64,
        path=f"uploads/{sha}.png",
        description=f"caption of {sha} by {model}",
        model=model,
        prompt=prompt,
        width=10,
        height=20,
        content_type="image/png",
        original_name=None,
    )
    return replace(record, **extra)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def repository(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CaptionRepository]:
    if request.param == "sqlite":
        catalogue: Any = SqliteCaptionRepository(tmp_path / "db.sqlite3")
    else:
        from captioner.adapters.catalogue.postgres import PostgresCaptionRepository

        catalogue = PostgresCaptionRepository(request.getfixturevalue("postgres_url"))
    yield catalogue
    catalogue.close()


def test_provenance_and_duration_are_kept_as_given(repository: CaptionRepository) -> None:
    provenance = Provenance.of("sha256:abc", {"max_new_tokens": 30, "num_beams": 1, "prompt": ""})

    added, _ = repository.add(new("a", provenance=provenance, duration_ms=12.5))

    assert added.provenance == provenance
    assert added.duration_ms == 12.5
    assert repository.get(added.id) == added


def test_find_many_answers_only_the_given_model_and_prompt(
    repository: CaptionRepository,
) -> None:
    a, _ = repository.add(new("a"))
    repository.add(new("b", model="other"))
    repository.add(new("c", prompt="a photo of"))
    d, _ = repository.add(new("d"))

    found = repository.find_many(["a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64], "m", "")

    assert sorted(r.id for r in found) == [a.id, d.id]
    assert repository.find_many([], "m", "") == []


def test_find_many_takes_a_thousand_digests_in_one_query(
    repository: CaptionRepository,
) -> None:
    repository.add(new("a"))
    digests = ["a" * 64] + [f"{n:064x}" for n in range(999)]

    assert [r.sha256 for r in repository.find_many(digests, "m", "")] == ["a" * 64]


def test_captions_of_lists_every_record_of_the_bytes_oldest_first(
    repository: CaptionRepository,
) -> None:
    first, _ = repository.add(new("a"))
    repository.add(new("b"))
    second, _ = repository.add(new("a", model="other"))

    assert repository.captions_of("a" * 64) == [first, second]


def test_without_caption_pages_one_record_per_image_that_lacks_the_model(
    repository: CaptionRepository,
) -> None:
    a, _ = repository.add(new("a"))
    repository.add(new("a", prompt="a photo of"))  # same bytes again: the image is listed once
    repository.add(new("b"))
    repository.add(new("b", model="new"))  # done already
    c, _ = repository.add(new("c", model="other"))

    first_page = repository.without_caption("new", "", limit=1)
    second_page = repository.without_caption("new", "", after=first_page[-1].id, limit=1)
    rest = repository.without_caption("new", "", after=second_page[-1].id)

    assert [r.id for r in (*first_page, *second_page)] == [a.id, c.id]
    assert rest == []
    assert repository.count_without_caption("new", "") == 2
    assert repository.count_without_caption("m", "") == 1  # only c lacks model m
