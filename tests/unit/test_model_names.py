"""A local model directory has one name however it is spelled; hub ids and openai: names stay."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest

from captioner.config import Settings, canonical_model_name
from captioner.domain.model import ImageDigest, ImageUpload, Provenance
from captioner.domain.service import CaptionService
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)
from tests.support.records import new_record


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "models" / "x"
    directory.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return directory


def test_four_spellings_of_a_local_directory_are_one_model(model_dir: Path) -> None:
    spellings = ["models/x", "./models/x", str(model_dir), "models/x/"]

    names = {Settings.load(overrides={"model": s}, environ={}).model for s in spellings}

    assert names == {str(model_dir.resolve())}


def test_a_relative_path_from_another_directory_names_the_same_model(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = canonical_model_name("models/x")
    monkeypatch.chdir(model_dir.parent)

    assert canonical_model_name("x") == here
    assert canonical_model_name("../models/x/") == here
    assert Settings(model="./x").model == here


def test_a_symlink_to_the_directory_names_the_directory(model_dir: Path) -> None:
    (model_dir.parent / "current").symlink_to(model_dir, target_is_directory=True)

    assert canonical_model_name("models/current") == str(model_dir.resolve())


def test_hub_ids_and_served_models_keep_their_names(model_dir: Path) -> None:
    assert canonical_model_name("Salesforce/blip-image-captioning-base") == (
        "Salesforce/blip-image-captioning-base"
    )
    assert canonical_model_name("openai:qwen/qwen2-vl") == "openai:qwen/qwen2-vl"


def test_a_path_that_is_not_there_yet_is_still_made_absolute(model_dir: Path) -> None:
    assert canonical_model_name("./models/blip-bse") == str(model_dir.parent / "blip-bse")
    assert canonical_model_name("models/blip-bse") == "models/blip-bse"  # may be a hub id


def _service_with_records(
    models: tuple[str, ...], revision: str | None
) -> tuple[CaptionService, FakeCaptioner, InMemoryCaptionRepository]:
    repository = InMemoryCaptionRepository()
    for index, model in enumerate(models):
        digest = ImageDigest.of_bytes(fake_image(f"image {index}")).hex
        repository.add(replace(new_record(digest, model=model), provenance=Provenance.of("w", {})))
    captioner = FakeCaptioner(model_name="/srv/models/x")
    captioner.revision = revision  # type: ignore[assignment]
    service = CaptionService(captioner, FakeImageDecoder(), InMemoryImageStore(), repository)
    return service, captioner, repository


def test_other_spellings_are_adopted_once_the_model_has_loaded() -> None:
    service, captioner, repository = _service_with_records(("models/x", "x/"), revision=None)

    before = service.adopt_earlier_spellings()  # still loading: revision unknown
    captioner.revision = "w"
    answer = service.describe(ImageUpload(io.BytesIO(fake_image("image 1")), "a.png"))

    assert before == 0
    assert answer.duplicate
    assert captioner.call_count == 0
    assert {r.model for r in repository.rows.values()} == {"/srv/models/x"}
    assert service.adopt_earlier_spellings() == 0  # once


def test_a_directory_of_another_name_or_other_weights_is_another_model() -> None:
    service, captioner, repository = _service_with_records(("models/y", "models/x"), "w")
    captioner.revision = "other weights"

    assert service.adopt_earlier_spellings() == 0
    assert {r.model for r in repository.rows.values()} == {"models/y", "models/x"}
