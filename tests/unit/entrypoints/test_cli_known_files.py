"""`captioner caption` asks the catalogue about every file's digest before describing any."""

from __future__ import annotations

import io
from pathlib import Path

from captioner.domain.model import Description, ImageDigest, ImageUpload
from captioner.domain.service import CaptionService
from captioner.entrypoints.cli.describe import describe_file, known_digests
from tests.support.fakes import (
    FakeCaptioner,
    FakeImageDecoder,
    InMemoryCaptionRepository,
    InMemoryImageStore,
    fake_image,
)


def test_known_files_are_answered_from_the_catalogue_and_only_new_ones_are_described(
    tmp_path: Path,
) -> None:
    captioner = FakeCaptioner()
    repository = InMemoryCaptionRepository()
    service = CaptionService(captioner, FakeImageDecoder(), InMemoryImageStore(), repository)
    stored = service.describe(ImageUpload(io.BytesIO(fake_image("cat")), "cat.jpg")).record
    seen, new, missing = tmp_path / "seen.jpg", tmp_path / "new.jpg", tmp_path / "gone.jpg"
    seen.write_bytes(fake_image("cat"))
    new.write_bytes(fake_image("dog"))
    repository.batch_lookups = 0

    digests = known_digests(service, [seen, new, missing])
    seen.write_bytes(b"not an image any more")  # a known file is not read again
    answers = [describe_file(service, path, digests.get(path)) for path in (seen, new)]

    assert digests[seen] == Description(stored, duplicate=True)
    assert digests[new] == ImageDigest.of_bytes(fake_image("dog"))
    assert missing not in digests
    assert repository.batch_lookups == 2  # one per caption source: the model's, a person's
    assert answers[0] == Description(stored, duplicate=True)
    assert isinstance(answers[1], Description)
    assert not answers[1].duplicate
    assert captioner.call_count == 2  # cat once at first, dog now
