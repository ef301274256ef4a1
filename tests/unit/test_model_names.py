"""A local model directory has one name however it is spelled; hub ids and openai: names stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.config import Settings, canonical_model_name


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
