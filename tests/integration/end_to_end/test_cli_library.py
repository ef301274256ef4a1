"""The `captioner` command on a real data dir with a fake model: the model loads only for new
files, commands that read say when there is no library, and each says what it did."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from dependency_injector import providers

from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.model import ImageDigest, Provenance
from captioner.entrypoints.cli import main
from tests.conftest import png_bytes
from tests.support.data_dir import DATABASE
from tests.support.fakes import FakeImageDecoder, LoadCountingModel, ModelLoads, fake_image
from tests.support.records import new_record


class FakeModelCli:
    """Runs `captioner` in-process with a fake model that counts how often it is loaded."""

    def __init__(self, capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
        self.capsys = capsys
        self.data_dir = data_dir
        self.loads = ModelLoads()

    def containers(self, settings: Settings, load_model: bool) -> Container:
        container = build_container(settings, load_model)
        container.model.override(
            providers.Factory(LoadCountingModel, model_name=settings.model, loads=self.loads)
        )
        container.image_decoder.override(providers.Object(FakeImageDecoder()))
        return container

    def __call__(self, *argv: str, data_dir: Path | None = None) -> tuple[int, str, str]:
        """`captioner ARGV` with ``--data-dir`` (this one's, unless another is given)."""
        where = ("--data-dir", str(data_dir or self.data_dir))
        command = 2 if argv[0] in ("keys", "db") else 1  # --data-dir follows the sub-command
        code = main([*argv[:command], *where, *argv[command:]], containers=self.containers)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], data_dir: Path) -> FakeModelCli:
    return FakeModelCli(capsys, data_dir)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat", "dog", "owl"):
        (folder / f"{name}.png").write_bytes(fake_image(name))
    return folder


def test_a_folder_of_known_files_is_answered_without_loading_the_model(
    cli: FakeModelCli, photos: Path
) -> None:
    first = cli("caption", str(photos))
    loads_after_first = cli.loads.loaded
    again = cli("caption", str(photos))
    as_json = cli("caption", "--json", str(photos))

    assert first[0] == again[0] == as_json[0] == 0
    assert loads_after_first == 1
    assert "loading model" in first[2]
    assert cli.loads.loaded == 1  # neither later run loaded it
    assert "loading model" not in again[2]
    # The same answers as the first time, marked as stored.
    assert again[1].splitlines() == [line + " (stored)" for line in first[1].splitlines()]
    lines = [json.loads(line) for line in as_json[1].splitlines()]
    assert [line["duplicate"] for line in lines] == [True, True, True]


def test_one_new_file_loads_the_model_once_and_says_so(cli: FakeModelCli, photos: Path) -> None:
    cli("caption", str(photos))
    (photos / "bee.png").write_bytes(fake_image("bee"))

    code, out, err = cli("caption", "--json", str(photos))

    assert code == 0
    assert cli.loads.loaded == 2
    assert err.count("loading model") == 1
    assert [json.loads(line)["duplicate"] for line in out.splitlines()] == [
        False,
        True,
        True,
        True,
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ("list",),
        ("list", "--json"),
        ("export",),
        ("check",),
        ("delete", "1"),
        ("edit", "1", "a cat"),
        ("recaption", "--model", "other"),
        ("keys", "list"),
        ("keys", "revoke", "nobody"),
        ("backup", "backup-folder"),
    ],
)
def test_commands_that_read_refuse_a_data_dir_without_a_library(
    cli: FakeModelCli, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    empty = tmp_path / "elsewhere"

    code, out, err = cli(*argv, data_dir=empty)

    assert code == 2
    assert out == ""
    assert str(empty.resolve()) in err
    assert "--data-dir" in err
    assert "CAPTIONER_DATA_DIR" in err
    assert not empty.exists()  # nothing was created where the command looked


def test_commands_that_create_start_a_library_where_there_is_none(
    cli: FakeModelCli, photos: Path, data_dir: Path
) -> None:
    code, _, _ = cli("keys", "create", "--scope", "read")

    assert code == 0
    assert (data_dir / DATABASE).is_file()
    assert cli("caption", str(photos))[0] == 0


def test_list_of_an_empty_library_says_so_and_keeps_json_output_clean(
    cli: FakeModelCli, data_dir: Path
) -> None:
    cli("db", "upgrade")

    code, out, _ = cli("list")
    json_code, json_out, json_err = cli("list", "--json")

    assert (code, json_code) == (0, 0)
    assert "is empty" in out
    assert str(data_dir.resolve()) in out
    assert json_out == ""
    assert "is empty" in json_err


def test_export_of_a_model_with_no_captions_fails_naming_the_models_present(
    cli: FakeModelCli, photos: Path, tmp_path: Path
) -> None:
    cli("caption", "--model", "fake-a", str(photos))

    code, out, err = cli("export", "--model", "fake-b")
    folder_code, _, folder_err = cli(
        "export", "--model", "fake-b", "--hf-imagefolder", str(tmp_path / "set")
    )
    found = cli("export", "--model", "fake-a")

    assert code == 1
    assert out == ""
    assert "fake-b" in err
    assert "fake-a" in err
    assert folder_code == 1
    assert "fake-a" in folder_err
    assert found[0] == 0
    assert len(found[1].splitlines()) == 3


def test_check_repair_names_every_record_and_file_it_removes(
    cli: FakeModelCli, photos: Path, data_dir: Path
) -> None:
    code, out, _ = cli("caption", "--json", str(photos))
    records = [json.loads(line) for line in out.splitlines()]
    gone = records[0]
    (data_dir / str(gone["path"])).unlink()
    orphan = data_dir / "uploads" / "ab" / "cd" / ("ab" * 32 + ".png")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(png_bytes((1, 2, 3)))

    code, out, _ = cli("check", "--repair", "--orphan-grace", "0")

    removed = [line for line in out.splitlines() if line.startswith("removed ")]
    assert code == 0
    assert len(removed) == 2
    record_line = next(line for line in removed if f"record {gone['id']}" in line)
    assert str(gone["sha256"])[:12] in record_line
    assert str(gone["path"]) in record_line
    assert "missing" in record_line
    file_line = next(line for line in removed if "file uploads/ab/cd/" in line)
    assert "ab" * 6 in file_line
    assert "no record uses it" in file_line


def test_a_refused_file_is_named_with_the_types_the_command_reads(
    cli: FakeModelCli, tmp_path: Path
) -> None:
    from captioner.container import build_container as real_container

    text = tmp_path / "notes.png"
    text.write_text("%PDF-1.4 not really an image")

    # The real decoder, so the real message: only the model is a fake here.
    def containers(settings: Settings, load_model: bool) -> Container:
        container = real_container(settings, load_model)
        container.model.override(
            providers.Factory(LoadCountingModel, model_name=settings.model, loads=cli.loads)
        )
        return container

    code = main(["caption", "--data-dir", str(cli.data_dir), str(text)], containers=containers)
    err = cli.capsys.readouterr().err

    assert code == 1
    assert str(text) in err
    assert "Upload" not in err
    assert "JPEG, PNG" in err
    assert "skipped" in err


def test_recaption_says_when_there_is_nothing_to_do_without_loading_the_model(
    cli: FakeModelCli, photos: Path
) -> None:
    cli("caption", str(photos))
    loads = cli.loads.loaded

    first = cli("recaption", "--model", "fake-b")
    again = cli("recaption", "--model", "fake-b")

    assert first[0] == again[0] == 0
    assert again[1] == ""
    assert "nothing to do" in again[2]
    assert "3 image(s)" in again[2]
    assert "fake-b" in again[2]
    assert cli.loads.loaded == loads + 1  # the first recaption's model only


def test_recaption_lines_follow_the_stored_images_order(cli: FakeModelCli, photos: Path) -> None:
    code, out, _ = cli("caption", "--json", str(photos))
    stored = sorted(json.loads(line)["id"] for line in out.splitlines())

    code, out, _ = cli("recaption", "--model", "fake-b")

    assert code == 0
    assert [int(line.split("\t")[0]) for line in out.splitlines()] == stored
    with sqlite3.connect(cli.data_dir / DATABASE) as db:
        models = db.execute("SELECT model, count(*) FROM images GROUP BY model").fetchall()
    assert sorted(models) == [("Salesforce/blip-image-captioning-base", 3), ("fake-b", 3)]


def test_records_stored_under_another_spelling_are_not_captioned_again(
    cli: FakeModelCli, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "models" / "x"
    model_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    catalogue = SqliteCaptionRepository(cli.data_dir / DATABASE)
    weights = Provenance.of("batch-revision", {})  # what the fake model's weights hash to
    spellings = ("models/x", "./models/x/", "x")  # the last from inside models/
    for path, spelling in zip(sorted(photos.iterdir()), spellings, strict=True):
        digest = ImageDigest.of_bytes(path.read_bytes()).hex
        catalogue.add(replace(new_record(digest, model=spelling), provenance=weights))
    catalogue.close()

    recaption = cli("recaption", "--model", "./models/x")
    caption = cli("caption", "--json", "--model", str(model_dir), str(photos))

    assert recaption[0] == 0
    assert "nothing to do" in recaption[2]
    assert "3 image(s)" in recaption[2]
    answers = [json.loads(line) for line in caption[1].splitlines()]
    assert [answer["duplicate"] for answer in answers] == [True, True, True]
    assert {answer["model"] for answer in answers} == {str(model_dir.resolve())}
    assert cli.loads.loaded == 1  # recaption's, to learn the weights' revision; caption none
