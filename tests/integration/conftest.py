"""Fixtures the integration tests share: files that cost seconds to make are made once."""

from __future__ import annotations

import pytest

from tests.support.heif_images import BIG_BLOCKS, heic, solid

PHOTO_48MP = (8064, 6048)  # an iPhone 14 Pro / 15 Pro / 16 Pro main-camera photo


@pytest.fixture(scope="session")
def heic_48mp() -> bytes:
    """A 48 MP HEIC in 512x512 tiles, as iPhones write it (one colour: x265 is quick on it)."""
    return heic(solid(PHOTO_48MP), quality=10, tile_size=512, enc_params=BIG_BLOCKS)
