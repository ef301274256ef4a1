"""`captioner bulk --engine local`: the same plan in one process, on SQLite and a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from captioner.container import opened
from captioner.entrypoints.cli import main
from tests.support.bulk import RUNS_FILE, counted_runs, counting_containers, image_tree


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runs = tmp_path / "runs"
    monkeypatch.setenv(RUNS_FILE, str(runs))
    monkeypatch.setenv("CAPTIONER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAPTIONER_MODEL", "counting-a")
    return runs


def captions_by(model: str) -> list[str]:
    from captioner.config import Settings

    settings = Settings.load(overrides={"model": model})
    with opened(counting_containers(settings, False)) as container:
        return [record.sha256 for record in container.service().export(model=model)]


def test_local_bulk_captions_each_new_image_once_and_a_rerun_none(
    runs: Path, tmp_path: Path
) -> None:
    image_tree(tmp_path / "photos", range(40))
    command = ["bulk", str(tmp_path / "photos"), "--engine", "local"]

    assert main(command, containers=counting_containers) == 0
    assert main(command, containers=counting_containers) == 0

    assert counted_runs(runs) == 40
    assert len(set(captions_by("counting-a"))) == 40


def test_bulk_over_the_catalogue_recaptions_the_stored_images_with_another_model(
    runs: Path, tmp_path: Path
) -> None:
    image_tree(tmp_path / "photos", range(12))
    assert (
        main(
            ["bulk", str(tmp_path / "photos"), "--engine", "local"], containers=counting_containers
        )
        == 0
    )
    recaption = ["bulk", "catalogue:", "--engine", "local", "--model", "counting-b"]

    assert (
        main([*recaption, "--parquet", str(tmp_path / "out")], containers=counting_containers) == 0
    )
    assert main(recaption, containers=counting_containers) == 0  # nothing left to do

    assert counted_runs(runs) == 24
    assert sorted(captions_by("counting-b")) == sorted(captions_by("counting-a"))
    table = pq.read_table(tmp_path / "out")
    assert set(table.column("model").to_pylist()) == {"counting-b"}
    assert set(table.column("status").to_pylist()) == {"captioned"}
    assert table.num_rows == 12


def test_an_image_that_cannot_be_read_is_reported_and_the_rest_are_captioned(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image_tree(tmp_path / "photos", range(5))
    (tmp_path / "photos" / "broken.png").write_bytes(b"not a png at all")

    code = main(
        ["bulk", str(tmp_path / "photos"), "--engine", "local"], containers=counting_containers
    )

    assert code == 1
    err = capsys.readouterr().err
    assert "6 read, 0 known, 5 captioned, 1 failed" in err
    assert f"failed: {tmp_path / 'photos' / 'broken.png'}:" in err
    assert counted_runs(runs) == 5


def test_the_ray_engine_without_ray_says_how_to_install_it(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    image_tree(tmp_path / "photos", range(2))

    code = main(
        ["bulk", str(tmp_path / "photos"), "--engine", "ray"], containers=counting_containers
    )

    assert code == 2
    assert "pip install 'captioner[ray]'" in capsys.readouterr().err
    assert counted_runs(runs) == 0
