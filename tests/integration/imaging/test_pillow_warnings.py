"""Pillow's warnings about odd but readable images never reach the caller, and importing or
using captioner leaves Pillow's process-wide settings as the host program set them.

The adapters quiet Pillow only while their own calls run (adapters/imaging/quiet.py).
pytest resets warning filters around every test, so the first two run in fresh interpreters.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
from PIL import Image

from captioner.adapters.imaging.quiet import quiet_pillow

SCRIPT = textwrap.dedent(
    """
    import io
    import threading

    from PIL import Image

    from captioner.adapters.imaging.decoder import PillowImageDecoder
    from captioner.adapters.imaging.thumbnails import render_thumbnail

    decoder = PillowImageDecoder(max_pixels=10_000)
    # Between Pillow's limit and twice it: Pillow warns of a bomb, our own limit allows it.
    Image.MAX_IMAGE_PIXELS = 1_000
    big = io.BytesIO()
    Image.new("RGB", (40, 40)).save(big, "PNG")
    corrupt_exif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(
        corrupt_exif,
        "JPEG",
        exif=b"Exif\\x00\\x00II*\\x00\\x08\\x00\\x00\\x00\\x05\\x00\\x12\\x01\\x03\\x00\\x01\\x00",
    )
    failures = []

    def work(data):
        try:
            decoder.decode(io.BytesIO(data))
            render_thumbnail(io.BytesIO(data), 16)
        except BaseException as error:
            failures.append(repr(error))

    threads = [
        threading.Thread(target=work, args=(data.getvalue(),))
        for data in (big, corrupt_exif) * 4
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    print("quiet")
    """
)


def printed_by(script: str) -> str:
    """What ``script`` printed in a fresh interpreter where any warning is an error."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_pillow_noise_about_readable_images_never_reaches_the_caller() -> None:
    assert printed_by(SCRIPT) == "quiet"


UNTOUCHED = textwrap.dedent(
    """
    import io
    import tempfile
    import warnings
    from pathlib import Path

    from PIL import Image

    filters, limit = list(warnings.filters), Image.MAX_IMAGE_PIXELS

    import captioner
    from captioner.config import Settings
    from captioner.container import build_container

    settings = Settings(data_dir=Path(tempfile.mkdtemp()), max_pixels=500_000_000)
    container = build_container(settings, load_model=False)
    decoder, thumbnails = container.image_decoder(), container.thumbnails()
    assert (warnings.filters, Image.MAX_IMAGE_PIXELS) == (filters, limit), "import or build"

    image = io.BytesIO()
    Image.new("RGB", (40, 40)).save(image, "PNG")
    decoder.decode(io.BytesIO(image.getvalue()))
    assert (warnings.filters, Image.MAX_IMAGE_PIXELS) == (filters, limit), "after a decode"
    print("untouched")
    """
)


def test_importing_and_using_captioner_leaves_pillows_globals_as_they_were() -> None:
    assert printed_by(UNTOUCHED) == "untouched"


def test_pillows_limit_is_lifted_only_while_a_decode_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)

    with quiet_pillow(5_000), quiet_pillow(2_000):
        during = Image.MAX_IMAGE_PIXELS

    assert (during, Image.MAX_IMAGE_PIXELS) == (5_000, 1_000)


def test_a_limit_the_host_sets_meanwhile_is_the_one_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)

    with quiet_pillow(5_000):
        Image.MAX_IMAGE_PIXELS = 3_000

    assert Image.MAX_IMAGE_PIXELS == 3_000


def test_a_warning_filter_the_host_had_already_stays() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        before = list(warnings.filters)

        with quiet_pillow(5_000):
            pass

        assert warnings.filters == before
