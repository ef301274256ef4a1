"""The `captioner` command on real files, a real data dir and a tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.config import Settings
from captioner.entrypoints.cli import main
from captioner.entrypoints.cli.admin import settings_table
from tests.conftest import png_bytes
from tests.support.records import RECORD_KEYS

pytestmark = pytest.mark.slow


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    (folder / "red.png").write_bytes(png_bytes((255, 0, 0)))
    (folder / "copy-of-red.png").write_bytes(png_bytes((255, 0, 0)))
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested" / "blue.png").write_bytes(png_bytes((0, 0, 255)))
    return folder


def caption_json(
    capsys: pytest.CaptureFixture[str], model: Path, data_dir: Path, *args: str
) -> tuple[int, str, str]:
    """`captioner caption --json` with the tiny model into ``data_dir``."""
    return run(
        capsys, "caption", "--json", "--model", str(model), "--data-dir", str(data_dir), *args
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_caption_json_gives_one_line_per_image_and_dedupes_same_bytes(
    photos: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = caption_json(capsys, tiny_blip_dir, data_dir, str(photos))

    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [Path(line["file"]).name for line in lines] == ["copy-of-red.png", "red.png"]
    assert all(line["description"].strip() for line in lines)
    assert sorted(line["duplicate"] for line in lines) == [False, True]
    assert lines[0]["sha256"] == lines[1]["sha256"]
    # The HTTP upload body's shape, in its order, after the file name.
    assert list(lines[0]) == ["file", *RECORD_KEYS, "duplicate"]
    assert "skipping" in err
    assert "notes.txt" in err


def test_caption_recursive_walks_sub_folders(
    photos: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = caption_json(capsys, tiny_blip_dir, data_dir, "-r", str(photos))

    names = sorted(Path(json.loads(line)["file"]).name for line in out.splitlines())
    assert code == 0
    assert names == ["blue.png", "copy-of-red.png", "red.png"]


def test_caption_exits_non_zero_with_a_summary_when_a_file_fails(
    photos: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = photos / "fake.jpg"
    fake.write_text("<html>not really a jpeg</html>")

    code, out, err = caption_json(
        capsys,
        tiny_blip_dir,
        data_dir,
        str(fake),
        str(photos / "red.png"),
        str(photos / "missing.png"),
    )

    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert "error" in lines[0]
    assert "not an image" in lines[0]["error"]
    assert "description" in lines[1]
    assert "error" in lines[2]
    assert "2 of 3 file(s) failed" in err


def test_list_search_delete_and_check_work_on_what_caption_stored(
    photos: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = caption_json(capsys, tiny_blip_dir, data_dir, "-r", str(photos))
    stored = {json.loads(line)["id"] for line in out.splitlines()}
    word = json.loads(out.splitlines()[0])["description"].split()[0]

    _, listed, _ = run(capsys, "list", "--json", "--data-dir", str(data_dir))
    _, found, _ = run(capsys, "list", "--json", "--search", word, "--data-dir", str(data_dir))
    assert {json.loads(line)["id"] for line in listed.splitlines()} == stored
    assert all(list(json.loads(line)) == [*RECORD_KEYS, "captions"] for line in listed.splitlines())
    assert found.strip()

    victim = min(stored)
    assert run(capsys, "delete", str(victim), "--data-dir", str(data_dir))[0] == 0
    _, after, _ = run(capsys, "list", "--json", "--data-dir", str(data_dir))
    assert {json.loads(line)["id"] for line in after.splitlines()} == stored - {victim}

    code, report, _ = run(capsys, "check", "--data-dir", str(data_dir))
    assert code == 0
    assert "no problems" in report


def test_delete_of_an_unknown_id_fails_with_a_message(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "db", "upgrade", "--data-dir", str(data_dir))
    code, _, err = run(capsys, "delete", "999", "--data-dir", str(data_dir))
    assert code == 1
    assert "No image with id 999" in err


def test_config_prints_settings_with_flags_beating_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "captioner.toml"
    config_file.write_text("max_batch = 4\nport = 6000\n")
    monkeypatch.setenv("CAPTIONER_PORT", "7000")

    code, out, _ = run(
        capsys, "config", "--json", "--config", str(config_file), "--model", "my/model"
    )

    shown = json.loads(out)
    assert code == 0
    assert (shown["max_batch"], shown["port"], shown["model"]) == (4, 7000, "my/model")


@pytest.mark.parametrize("as_json", [False, True])
def test_config_never_prints_the_openai_api_key_or_a_url_password(
    as_json: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPTIONER_OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv(
        "CAPTIONER_OPENAI_BASE_URL", "http://me:hunter2@gpu-box:8000/v1,http://spare:8000/v1"
    )

    code, out, _ = run(capsys, "config", *(["--json"] if as_json else []))

    assert code == 0
    assert "sk-very-secret" not in out
    assert "hunter2" not in out
    assert "gpu-box:8000/v1" in out  # the rest of the setting is still shown
    assert "http://spare:8000/v1" in out


def test_printing_settings_in_a_program_shows_no_key_or_password() -> None:
    settings = Settings(
        openai_api_key="sk-very-secret", database_url="postgresql://cap:hunter2@db/cap"
    )
    for shown in (repr(settings), str(settings)):
        assert "sk-very-secret" not in shown
        assert "hunter2" not in shown


def test_bad_settings_are_refused_with_exit_code_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPTIONER_MAX_BATCH", "lots")
    code, _, err = run(capsys, "config")
    assert code == 2
    assert "CAPTIONER_MAX_BATCH" in err


def test_the_configuration_page_table_matches_the_settings() -> None:
    page = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()
    assert settings_table() in page


def test_delete_goes_on_past_unknown_ids_and_names_them(
    photos: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "caption", "--model", str(tiny_blip_dir), "--data-dir", str(data_dir), str(photos))
    _, listed, _ = run(capsys, "list", "--json", "--data-dir", str(data_dir))
    known = json.loads(listed.splitlines()[0])["id"]

    code, out, err = run(capsys, "delete", "998", str(known), "999", "--data-dir", str(data_dir))

    assert code == 1
    assert f"deleted {known}" in out
    assert "2 of 3 id(s) not found: 998 999" in err


def test_caption_does_not_compile_the_model_by_default(
    photos: Path,
    data_dir: Path,
    tiny_blip_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server's default (compile in the background) would only take CPU from a CLI run.
    monkeypatch.delenv("CAPTIONER_COMPILE")

    code, out, _ = caption_json(capsys, tiny_blip_dir, data_dir, str(photos))

    assert code == 0
    assert len(out.splitlines()) == 2
    assert not (data_dir / "compile-cache").exists()


def test_every_spelling_of_the_model_directory_is_one_model(
    photos: Path,
    data_dir: Path,
    tiny_blip_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = tiny_blip_dir.parent
    monkeypatch.chdir(models.parent)
    relative = f"{models.name}/{tiny_blip_dir.name}"
    first = caption_json(capsys, Path(relative), data_dir, str(photos / "red.png"))
    later = [
        caption_json(capsys, Path(spelling), data_dir, str(photos / "red.png"))
        for spelling in (f"./{relative}", str(tiny_blip_dir), f"{relative}/")
    ]
    monkeypatch.chdir(models)  # a relative path from another working directory
    later.append(caption_json(capsys, Path(tiny_blip_dir.name), data_dir, str(photos / "red.png")))

    answers = [json.loads(out) for _, out, _ in (first, *later)]
    assert [code for code, _, _ in (first, *later)] == [0] * 5
    assert [answer["duplicate"] for answer in answers] == [False, True, True, True, True]
    assert {answer["model"] for answer in answers} == {str(tiny_blip_dir.resolve())}
    assert {answer["id"] for answer in answers} == {answers[0]["id"]}
    assert all("loading model" not in err for _, _, err in later)  # known: no model load


def test_caption_with_a_mistyped_model_directory_says_so_and_exits_1(
    photos: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "models" / "blip-bse"
    missing.parent.mkdir()
    (missing.parent / "blip-base").mkdir()

    code, out, err = run(
        capsys, "caption", "--model", str(missing), "--data-dir", str(data_dir), str(photos)
    )

    assert code == 1
    assert out == ""
    assert f"captioner: model {missing} could not be loaded: no such model directory: " in err
    assert "has: blip-base)" in err
    assert "HF_HUB_OFFLINE" not in err
