"""The Hugging Face ImageFolder export is a library call, not only a CLI flag."""

from __future__ import annotations

import io
import json
from pathlib import Path

from captioner.domain.model import ImageUpload
from captioner.domain.service import CaptionService
from captioner.exports import export_imagefolder
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)


def test_a_library_user_exports_an_image_folder_named_by_content(tmp_path: Path) -> None:
    captioner = FakeCaptioner()
    service = CaptionService(
        captioner, FakeImageDecoder(), InMemoryImageStore(), InMemoryCaptionRepository()
    )
    cat = service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "cat.jpg")).record
    service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "again.jpg"))  # same bytes

    written = export_imagefolder(service, str(tmp_path / "set"), cat.model)

    split = tmp_path / "set" / "train"  # a split folder: every datasets version finds it
    lines = (split / "metadata.jsonl").read_text().splitlines()
    file_name = f"{cat.sha256}.{cat.path.rsplit('.', 1)[-1]}"
    assert written == 1
    assert [json.loads(line)["file_name"] for line in lines] == [file_name]
    assert json.loads(lines[0])["text"] == cat.description
    assert (split / file_name).read_bytes() == fake_image("cat")
    assert sorted(path.name for path in split.iterdir()) == sorted([file_name, "metadata.jsonl"])
