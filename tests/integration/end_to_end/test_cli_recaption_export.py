"""`captioner recaption` and `captioner export` on a real data dir with tiny real models, and
`captioner caption` answering known files from the catalogue."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.domain.model import NewImageRecord
from captioner.entrypoints.cli import main
from tests.conftest import png_bytes
from tests.support.data_dir import DATABASE

pytestmark = pytest.mark.slow


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for number in range(3):
        (folder / f"{number}.png").write_bytes(png_bytes((80 * number, 10, 200)))
    return folder


@pytest.fixture
def library(
    photos: Path, data_dir: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> Path:
    """A data dir where the tiny BLIP model captioned three photos."""
    code, _, err = run(
        capsys, "caption", "--model", str(tiny_blip_dir), "--data-dir", str(data_dir), str(photos)
    )
    assert code == 0, err
    return data_dir


def models_per_image(data_dir: Path) -> dict[str, Counter[str]]:
    repository = SqliteCaptionRepository(data_dir / DATABASE)
    try:
        seen: dict[str, Counter[str]] = {}
        for record in repository.all_records():
            seen.setdefault(record.sha256, Counter())[f"{record.model}|{record.prompt}"] += 1
        return seen
    finally:
        repository.close()


def test_recaption_adds_one_caption_per_image_with_provenance_and_keeps_the_old(
    library: Path, tiny_blip_dir: Path, tiny_vit_gpt2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_model = str(tiny_vit_gpt2_dir)

    code, out, err = run(
        capsys, "recaption", "--json", "--model", new_model, "--data-dir", str(library)
    )
    again, out_again, _ = run(
        capsys, "recaption", "--json", "--model", new_model, "--data-dir", str(library)
    )

    assert (code, again) == (0, 0), err
    lines = json_lines(out)
    assert len(lines) == 3
    assert out_again == ""  # nothing left to do
    for line in lines:
        assert line["model"] == new_model
        assert str(line["model_revision"]).startswith("sha256:")
        assert line["generation"] == {"max_new_tokens": 30, "num_beams": 1, "prompt": ""}
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] > 0
    assert all(
        seen == Counter({f"{tiny_blip_dir}|": 1, f"{new_model}|": 1})
        for seen in models_per_image(library).values()
    )


def test_recaption_dry_run_lists_what_it_would_do_and_limit_caps_a_run(
    library: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--model", str(tiny_blip_dir), "--prompt", "a photo of", "--data-dir", str(library))

    _, planned, summary = run(capsys, "recaption", "--dry-run", *base)
    code, done, _ = run(capsys, "recaption", "--json", "--limit", "2", *base)
    _, left, _ = run(capsys, "recaption", "--dry-run", *base)

    assert len(planned.splitlines()) == 3
    assert "3 image(s) to caption" in summary
    assert code == 0
    assert [line["prompt"] for line in json_lines(done)] == ["a photo of", "a photo of"]
    assert len(left.splitlines()) == 1


def test_interrupted_recaption_resumes_with_exactly_one_new_caption_per_image(
    data_dir: Path, tiny_blip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "many"
    photos.mkdir()
    for number in range(24):
        (photos / f"{number}.png").write_bytes(png_bytes((number * 10, 255 - number * 10, 7)))
    code, _, err = run(
        capsys, "caption", "--model", str(tiny_blip_dir), "--data-dir", str(data_dir), str(photos)
    )
    assert code == 0, err
    # The same model with another prompt, one image at a time and slow (beam search over long
    # captions), so the interrupt lands mid-run.
    command = [
        sys.executable,
        "-m",
        "captioner.entrypoints.cli",
        "recaption",
        "--model",
        str(tiny_blip_dir),
        "--prompt",
        "a photo of",
        "--data-dir",
        str(data_dir),
    ]
    environment = {
        **os.environ,
        "CAPTIONER_MAX_BATCH": "1",
        "CAPTIONER_NUM_BEAMS": "4",
        "CAPTIONER_MAX_NEW_TOKENS": "40",
        "CAPTIONER_TORCH_THREADS": "1",
    }
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    first_lines = [process.stdout.readline() for _ in range(2)]
    process.send_signal(signal.SIGINT)
    _, interrupted_err = process.communicate(timeout=120)

    prompted = "|a photo of"
    done_before = sum(
        seen[f"{tiny_blip_dir}{prompted}"] for seen in models_per_image(data_dir).values()
    )
    assert all(line.strip() for line in first_lines), interrupted_err
    assert process.returncode == 130, interrupted_err
    assert 2 <= done_before < 24  # the interrupt really cut the run short

    resumed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)

    assert resumed.returncode == 0, resumed.stderr
    assert len(resumed.stdout.splitlines()) == 24 - done_before
    seen = models_per_image(data_dir)
    assert len(seen) == 24
    assert all(counts[f"{tiny_blip_dir}{prompted}"] == 1 for counts in seen.values())
    assert all(counts[f"{tiny_blip_dir}|"] == 1 for counts in seen.values())


def test_export_jsonl_and_csv_give_one_row_per_record_with_provenance(
    library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, jsonl, _ = run(capsys, "export", "--data-dir", str(library))
    _, table, _ = run(capsys, "export", "--format", "csv", "--data-dir", str(library))

    lines = json_lines(jsonl)
    rows = list(csv.DictReader(io.StringIO(table)))
    assert len(lines) == len(rows) == 3
    for line, row in zip(lines, rows, strict=True):
        assert {"sha256", "path", "description", "model", "model_revision", "generation"} <= set(
            line
        )
        assert str(line["model_revision"]).startswith("sha256:")
        assert row["sha256"] == line["sha256"]
        assert row["model_revision"] == line["model_revision"]
        assert json.loads(row["generation"]) == line["generation"]


def test_export_hf_imagefolder_writes_images_and_metadata_by_the_imagefolder_rules(
    library: Path, tiny_blip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "dataset" / "train"  # the split folder (datasets #6442)

    code, out, _ = run(
        capsys,
        "export",
        "--hf-imagefolder",
        str(folder.parent),
        "--model",
        str(tiny_blip_dir),
        "--data-dir",
        str(library),
    )

    assert code == 0
    assert "wrote 3 image(s)" in out
    metadata = json_lines((folder / "metadata.jsonl").read_text())
    assert len(metadata) == 3
    # ImageFolder's rules: metadata.jsonl beside the images, each line's file_name a path
    # relative to it naming an existing image file (once), other columns become features.
    names = [str(line["file_name"]) for line in metadata]
    assert len(set(names)) == 3
    assert sorted(names) == sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
    for line in metadata:
        assert (folder / str(line["file_name"])).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(line["text"]).strip()
        assert line["model"] == str(tiny_blip_dir)
    assert not list(folder.glob("*.partial"))


def test_caption_answers_files_seen_before_from_the_catalogue_with_their_provenance(
    library: Path, photos: Path, tiny_blip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "caption",
        "--json",
        "--model",
        str(tiny_blip_dir),
        "--data-dir",
        str(library),
        str(photos),
    )

    _, listed, _ = run(capsys, "list", "--json", "--data-dir", str(library))

    lines = json_lines(out)
    assert code == 0
    assert [line["duplicate"] for line in lines] == [True, True, True]
    for line in [*lines, *json_lines(listed)]:
        assert str(line["model_revision"]).startswith("sha256:")
        assert line["generation"] == {"max_new_tokens": 30, "num_beams": 1, "prompt": ""}
        assert isinstance(line["duration_ms"], float)


def test_export_of_an_image_whose_file_is_gone_says_how_to_repair(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sha256 = "ab" * 32
    data_dir.mkdir()
    repository = SqliteCaptionRepository(data_dir / DATABASE)
    try:
        repository.add(
            NewImageRecord(
                sha256=sha256,
                path=f"uploads/ab/ab/{sha256}.png",  # never written
                description="a cat",
                model="some-model",
                prompt="",
                width=1,
                height=1,
                content_type="image/png",
                original_name=None,
            )
        )
    finally:
        repository.close()

    code, _, err = run(
        capsys,
        "export",
        "--hf-imagefolder",
        str(tmp_path / "out"),
        "--model",
        "some-model",
        "--data-dir",
        str(data_dir),
    )

    assert code == 1
    assert "is missing" in err
    assert "captioner check --repair" in err


def test_list_after_a_recaption_shows_each_image_once_and_model_picks_whose_caption(
    library: Path, tiny_blip_dir: Path, tiny_vit_gpt2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_model = str(tiny_vit_gpt2_dir)
    code, _, err = run(capsys, "recaption", "--model", new_model, "--data-dir", str(library))
    assert code == 0, err

    # Neither tiny model is the configured one: each image shows its newest caption.
    _, listed, _ = run(capsys, "list", "--json", "--data-dir", str(library))
    _, by_blip, _ = run(
        capsys, "list", "--json", "--model", str(tiny_blip_dir), "--data-dir", str(library)
    )
    _, text, _ = run(capsys, "list", "--data-dir", str(library))

    assert [line["model"] for line in json_lines(listed)] == [new_model] * 3
    assert [line["captions"] for line in json_lines(listed)] == [2, 2, 2]
    assert [line["model"] for line in json_lines(by_blip)] == [str(tiny_blip_dir)] * 3
    assert len({line["sha256"] for line in json_lines(by_blip)}) == 3
    assert len(text.splitlines()) == 3
    assert all(line.split("\t")[2] == new_model for line in text.splitlines())
