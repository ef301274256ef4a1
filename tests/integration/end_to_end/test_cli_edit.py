"""`captioner edit` and `recaption --replace-edits` on a real data dir with tiny real models."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from captioner.entrypoints.cli import main
from tests.conftest import png_bytes

pytestmark = pytest.mark.slow


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def library(
    tmp_path: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> Path:
    """A data dir where the tiny BLIP model captioned two photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for number in range(2):
        (folder / f"{number}.png").write_bytes(png_bytes((90 * number, 10, 200)))
    code, _, err = run(
        capsys, "caption", "--model", str(tiny_blip_dir), "--data-dir", str(data_dir), str(folder)
    )
    assert code == 0, err
    return data_dir


def ids(capsys: pytest.CaptureFixture[str], library: Path) -> list[int]:
    _, out, _ = run(capsys, "list", "--json", "--data-dir", str(library))
    return sorted(line["id"] for line in json_lines(out))


def test_edit_keeps_a_persons_caption_that_list_search_and_export_show(
    library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = ids(capsys, library)

    code, out, err = run(
        capsys, "edit", "--json", str(first), "a zebra crossing", "--data-dir", str(library)
    )
    _, found, _ = run(capsys, "list", "--json", "--search", "zebra", "--data-dir", str(library))
    _, csv_text, _ = run(capsys, "export", "--format", "csv", "--data-dir", str(library))

    assert code == 0, err
    edited = json.loads(out)
    assert (edited["description"], edited["source"], edited["generation"]["by"]) == (
        "a zebra crossing",
        "person",
        "cli",
    )
    assert [(line["description"], line["captions"]) for line in json_lines(found)] == [
        ("a zebra crossing", 2)
    ]
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert sorted(row["source"] for row in rows) == ["model", "model", "person"]


def test_edit_refuses_blank_text_and_unknown_ids(
    library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = ids(capsys, library)

    blank = run(capsys, "edit", str(first), "   ", "--data-dir", str(library))
    unknown = run(capsys, "edit", "999", "a cat", "--data-dir", str(library))

    assert blank[0] == 1
    assert "empty" in blank[2]
    assert unknown[0] == 1
    assert "999" in unknown[2]


def test_recaption_keeps_edits_unless_told_to_replace_them(
    library: Path, tiny_vit_gpt2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = ids(capsys, library)
    for image_id in (first, second):
        run(capsys, "edit", str(image_id), f"edited {image_id}", "--data-dir", str(library))
    new_model = str(tiny_vit_gpt2_dir)

    kept = run(
        capsys, "recaption", "--limit", "1", "--model", new_model, "--data-dir", str(library)
    )
    replaced = run(
        capsys, "recaption", "--replace-edits", "--model", new_model, "--data-dir", str(library)
    )
    _, listed, _ = run(capsys, "list", "--json", "--data-dir", str(library))

    assert (kept[0], replaced[0]) == (0, 0), kept[2] + replaced[2]
    shown = {line["id"]: line for line in json_lines(listed)}
    assert [(line["source"], line["captions"]) for line in shown.values()].count(
        ("person", 3)
    ) == 1  # recaptioned first without --replace-edits: the edit is still shown
    assert [(line["model"], line["captions"]) for line in shown.values()].count(
        (new_model, 2)
    ) == 1  # recaptioned with it: the person's caption is gone, the new model's shown
