"""Sidecars, shards and imports read back by the tools that consume them: exiftool reads the
XMP sidecars (a merged one keeps exiftool's own rating and tags), `datasets` loads the
ImageFolder, tarfile and webdataset read the shards; a folder captioned with XMP sidecars
comes back from `captioner import` with no model run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from dependency_injector import providers
from PIL import Image

from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.entrypoints.cli import main
from tests.conftest import png_bytes
from tests.support.fakes import LoadCountingModel, ModelLoads

EXIFTOOL_HINT = "exiftool is missing: apt-get install libimage-exiftool-perl"


class CountingCli:
    """`captioner` in-process on a real data dir and the real decoder, with a fake model
    whose runs are counted."""

    def __init__(self, capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
        self.capsys = capsys
        self.data_dir = data_dir
        self.loads = ModelLoads()
        self.models: list[LoadCountingModel] = []

    def containers(self, settings: Settings, load_model: bool) -> Container:
        container = build_container(settings, load_model)

        def model() -> LoadCountingModel:
            built = LoadCountingModel(model_name=settings.model, loads=self.loads)
            self.models.append(built)
            return built

        container.model.override(providers.Factory(model))
        return container

    @property
    def model_runs(self) -> int:
        return sum(sum(model.batch_sizes) for model in self.models)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        where = ["--data-dir", str(self.data_dir)]
        code = main([argv[0], *where, *argv[1:]], containers=self.containers)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], data_dir: Path) -> CountingCli:
    return CountingCli(capsys, data_dir)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    for number in range(3):
        (folder / f"{number}.png").write_bytes(png_bytes((80 * number, 10, 200)))
    (folder / "trip" / "beach.png").write_bytes(png_bytes((5, 90, 5)))
    return folder


@pytest.fixture
def exiftool() -> str:
    found = shutil.which("exiftool")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(EXIFTOOL_HINT)
        pytest.skip(EXIFTOOL_HINT)
    return found


def exif(exiftool: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [exiftool, "-json", "-G1", *args], capture_output=True, text=True, check=True
    )
    (tags,) = json.loads(done.stdout)
    return dict(tags)


def captions(cli: CountingCli, *argv: str) -> dict[str, str]:
    code, out, err = cli("caption", "--json", "--model", "fake", "-r", *argv)
    assert code == 0, err
    return {line["file"]: line["description"] for line in map(json.loads, out.splitlines())}


def test_exiftool_reads_the_caption_from_every_xmp_sidecar_and_a_merge_keeps_its_tags(
    cli: CountingCli, photos: Path, exiftool: str
) -> None:
    merged = photos / "1.png.xmp"
    subprocess.run(
        [
            exiftool,
            "-q",
            "-o",
            str(merged),
            "-XMP-xmp:Rating=4",
            "-XMP-dc:Subject=cat",
            "-XMP-dc:Subject=sofa",
            str(photos / "1.png"),
        ],
        check=True,
    )

    described = captions(cli, "--sidecar", "xmp", str(photos))

    for image, text in described.items():
        tags = exif(exiftool, f"{image}.xmp")
        assert tags["XMP-dc:Description"] == text
        assert tags["XMP-captioner:Source"] == "model"
        assert tags["XMP-captioner:Model"] == "fake"
    code, _, err = cli("caption", "--model", "fake", "--sidecar", "xmp", str(photos / "0.png"))
    assert code == 0
    assert f"{photos / '0.png.xmp'} exists, left alone (--overwrite replaces it)" in err
    kept = exif(exiftool, str(merged))
    assert kept["XMP-xmp:Rating"] == 4
    assert kept["XMP-dc:Subject"] == ["cat", "sofa"]
    assert kept["XMP-dc:Description"] == described[str(photos / "1.png")]
    assert oct(merged.stat().st_mode & 0o777) == "0o644"


def test_a_description_a_person_wrote_is_never_replaced_only_reported(
    cli: CountingCli, photos: Path, exiftool: str
) -> None:
    sidecar = photos / "0.png.xmp"
    subprocess.run(
        [
            exiftool,
            "-q",
            "-o",
            str(sidecar),
            "-XMP-dc:Description=Grandma's garden",
            str(photos / "0.png"),
        ],
        check=True,
    )
    before = sidecar.read_bytes()

    code, _, err = cli(
        "caption", "--model", "fake", "--sidecar", "xmp", "--overwrite", str(photos / "0.png")
    )

    assert code == 0
    assert sidecar.read_bytes() == before
    assert f"{sidecar} holds a description a person wrote; not replaced" in err


def test_text_sidecars_are_left_alone_unless_overwrite_and_can_go_to_a_mirrored_tree(
    cli: CountingCli, photos: Path, tmp_path: Path
) -> None:
    (photos / "0.txt").write_text("mine\n")
    mirror = tmp_path / "sidecars"

    captions(cli, "--sidecar", "txt", str(photos))
    captions(cli, "--sidecar", "caption", "--sidecar-dir", str(mirror), str(photos))
    kept = (photos / "0.txt").read_text()
    described = captions(cli, "--sidecar", "txt", "--overwrite", str(photos))

    assert kept == "mine\n"
    assert (photos / "0.txt").read_text() == described[str(photos / "0.png")] + "\n"
    assert (mirror / "trip" / "beach.caption").read_text() == (
        described[str(photos / "trip" / "beach.png")] + "\n"
    )
    assert not list(photos.rglob("*.caption"))


def test_caption_with_xmp_sidecars_then_a_new_catalogue_and_import_gives_the_same_captions(
    cli: CountingCli, photos: Path
) -> None:
    first = captions(cli, "--sidecar", "xmp", str(photos))
    runs = cli.model_runs
    shutil.rmtree(cli.data_dir)

    code, out, err = cli("import", "-r", str(photos))
    again = captions(cli, str(photos))

    assert code == 0, err
    assert "imported 4" in err
    assert again == first
    assert cli.model_runs == runs == 4
    assert cli.loads.loaded == 1  # the caption after the import did not even load the model
    code, out, _ = cli("export", "--format", "jsonl")
    records = list(map(json.loads, out.splitlines()))
    assert {r["model"] for r in records} == {"fake"}
    assert all(r["model_revision"] == "batch-revision" for r in records)


def test_import_reads_text_sidecars_exif_and_a_jsonl_export_and_reports_conflicts(
    cli: CountingCli, photos: Path, tmp_path: Path
) -> None:
    (photos / "0.txt").write_text("a red square, by hand\n")
    exif_data = Image.Exif()
    exif_data[0x010E] = "Written in the camera's EXIF"
    with Image.open(photos / "1.png") as image:
        image.save(photos / "1.png", exif=exif_data)
    (photos / "2.caption").write_text("kohya style caption")

    code, _, err = cli("import", str(photos))
    persons = captions(cli, str(photos))
    (photos / "0.txt").write_text("other words\n")
    conflict, _, conflict_err = cli("import", str(photos))

    assert code == 0, err
    assert persons[str(photos / "0.png")] == "a red square, by hand"
    assert persons[str(photos / "1.png")] == "Written in the camera's EXIF"
    assert persons[str(photos / "2.png")] == "kohya style caption"
    assert cli.model_runs == 1  # only trip/beach.png had no caption (not walked: no -r)
    assert conflict == 1
    assert "conflict" in conflict_err
    assert "'a red square, by hand'" in conflict_err
    _, listed, _ = cli("list")
    assert "other words" not in listed


def provenance_of(jsonl: str) -> list[tuple[object, ...]]:
    keys = ("description", "sha256", "model", "prompt", "model_revision", "generation")
    return sorted(
        tuple(json.dumps(json.loads(line)[k]) for k in keys) for line in jsonl.splitlines()
    )


def test_import_of_a_jsonl_export_keeps_provenance_and_needs_the_images(
    cli: CountingCli, photos: Path, tmp_path: Path
) -> None:
    captions(cli, str(photos))
    _, exported, _ = cli("export")
    (photos / "library.jsonl").write_text(exported)
    shutil.rmtree(cli.data_dir)

    code, _, err = cli("import", "-r", str(photos))
    _, again, _ = cli("export")

    assert code == 0, err
    assert provenance_of(again) == provenance_of(exported)


def test_webdataset_shards_are_read_by_tarfile_and_webdataset_with_a_manifest(
    cli: CountingCli, photos: Path, tmp_path: Path
) -> None:
    described = captions(cli, str(photos))
    shards = tmp_path / "shards"

    code, _, err = cli("export", "--webdataset", str(shards), "--shard-size", "3")

    assert code == 0, err
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["samples"] == 4
    assert [s["samples"] for s in manifest["shards"]] == [3, 1]
    texts = set()
    for shard in manifest["shards"]:
        path = shards / shard["name"]
        assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len(names) == 3 * shard["samples"]
            for name in names:
                if name.endswith(".txt"):
                    texts.add(tar.extractfile(name).read().decode())  # type: ignore[union-attr]
    assert texts == set(described.values())
    import webdataset  # a dev dependency: imported here, as loading it takes a while

    decode = webdataset.autodecode.Decoder([webdataset.autodecode.imagehandler("pil")])
    samples = []
    for shard in manifest["shards"]:
        # Streams opened here and closed here (WebDataset's own opener leaves them to the GC).
        with (shards / shard["name"]).open("rb") as stream:
            files = webdataset.tariterators.tar_file_expander(
                [{"stream": stream, "url": shard["name"]}]
            )
            found = webdataset.tariterators.group_by_keys(files)
            samples += [decode(sample) for sample in found if sample]
    assert len(samples) == 4
    assert {sample["txt"] for sample in samples} == set(described.values())
    assert all(sample["png"].size == (64, 48) for sample in samples)
    assert all(sample["json"]["sha256"] == sample["__key__"] for sample in samples)


def test_datasets_loads_the_image_folder_export(
    cli: CountingCli, photos: Path, tmp_path: Path
) -> None:
    import datasets  # a dev dependency: imported here, as loading it takes a while

    described = captions(cli, str(photos))

    code, _, err = cli("export", "--model", "fake", "--hf-imagefolder", str(tmp_path / "set"))
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "set"), cache_dir=str(tmp_path / "cache")
    )

    assert code == 0, err
    assert list(loaded) == ["train"]
    assert sorted(loaded["train"]["text"]) == sorted(described.values())
    assert loaded["train"][0]["image"].size == (64, 48)


def test_export_sidecars_names_them_after_unique_original_names_else_the_digest(
    cli: CountingCli, photos: Path, tmp_path: Path, exiftool: str
) -> None:
    (photos / "trip" / "0.png").write_bytes(png_bytes((1, 2, 3)))  # a second "0.png"
    captions(cli, "-r", str(photos))
    out_dir = tmp_path / "out"

    code, _, err = cli("export", "--sidecars", str(out_dir))
    text_code, _, _ = cli("export", "--sidecars", str(out_dir), "--format", "txt")

    assert code == text_code == 0, err
    names = sorted(path.name for path in out_dir.iterdir())
    assert "1.png.xmp" in names
    assert "beach.png.xmp" in names
    assert "0.png.xmp" not in names
    digests = [name for name in names if len(name.split(".")[0]) == 64]
    assert len(digests) == 4  # the two 0.png: an xmp and a txt each
    assert exif(exiftool, str(out_dir / "1.png.xmp"))["XMP-dc:Description"] == (
        (out_dir / "1.txt").read_text().strip()
    )


def test_json_sidecars_hold_the_record_and_xmp_can_be_named_photo_xmp(
    cli: CountingCli, photos: Path
) -> None:
    code, out, err = cli(
        "caption", "--json", "--model", "fake", "--sidecar", "json", str(photos / "0.png")
    )
    named, _, _ = cli(
        "caption",
        "--model",
        "fake",
        "--sidecar",
        "xmp",
        "--sidecar-name",
        "photo.xmp",
        str(photos / "0.png"),
    )

    assert code == named == 0, err
    (line,) = map(json.loads, out.splitlines())
    assert line["sidecar"] == str(photos / "0.json")
    assert line["sidecar_status"] == "written"
    record = json.loads((photos / "0.json").read_text())
    assert record["description"] == line["description"]
    assert record["sha256"] == line["sha256"]
    assert (photos / "0.xmp").is_file()
    assert not (photos / "0.png.xmp").exists()
