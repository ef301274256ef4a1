"""Which files in a folder are sidecars of its images, so a folder scan mentions only strays."""

from __future__ import annotations

from pathlib import Path

from captioner.domain.layout import IMAGE_SUFFIXES
from captioner.sidecars.files import sidecars_among


def test_sidecars_beside_an_image_are_told_apart_from_stray_files_of_the_same_suffix() -> None:
    folder = Path("/photos")
    images = [folder / "beach.jpg", folder / "cat.heic", folder / "sub" / "dog.png"]
    sidecars = [
        folder / "beach.jpg.xmp",
        folder / "beach.txt",
        folder / "cat.xmp",
        folder / "cat.caption",
        folder / "sub" / "dog.json",
    ]
    strays = [
        folder / "notes.txt",
        folder / "dog.json",  # dog.png is in sub/, not here
        folder / "beach.jpg.md",
        folder / "readme.xmp",
    ]
    assert all(image.suffix in IMAGE_SUFFIXES for image in images)

    assert sidecars_among([*images, *sidecars, *strays], images) == set(sidecars)
