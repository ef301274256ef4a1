"""Real-sized photos the benches make themselves: what phones and cameras send.

Each picture has what makes decoding and resizing cost what they cost on a photo: smooth
light, hard edges, fine texture and sensor noise (a flat colour would flatter every shortcut).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

ORIENTATION = 0x0112


@dataclass(frozen=True)
class Photo:
    """One file of the corpus: its name, bytes, and upright size."""

    name: str
    data: bytes
    upright: tuple[int, int]


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB picture: light that varies slowly, shapes with sharp edges, texture."""
    rng = np.random.default_rng(seed)
    # Slow light: a coarse random field, enlarged smoothly.
    coarse = rng.integers(40, 220, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (
            int(rng.integers(width // 40, width // 5)),
            int(rng.integers(height // 40, height // 5)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    for _ in range(200):  # thin lines: branches, wires, text strokes
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        dx, dy = (int(v) for v in rng.integers(-width // 8, width // 8, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line((x, y, x + dx, y + dy), fill=colour, width=int(rng.integers(1, 6)))
    pixels = np.asarray(image, dtype=np.int16)
    # Texture and sensor noise at full resolution, so the fine detail is really there.
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    grain = rng.integers(-10, 11, (height // 4 + 1, width // 4 + 1, 1), dtype=np.int16)
    grain = np.repeat(np.repeat(grain, 4, axis=0), 4, axis=1)[:height, :width]
    return Image.fromarray(np.clip(pixels + noise + grain, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, orientation: int | None = None, quality: int = 90) -> bytes:
    """JPEG as a phone writes it (4:2:0), with an EXIF orientation when given."""
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def heic(image: Image.Image, orientation: int | None = None) -> bytes:
    from pillow_heif import from_pillow

    heif = from_pillow(image)
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    heif.save(out, quality=80, exif=exif.tobytes())
    return out.getvalue()


def avif(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "AVIF", quality=75, speed=8)
    return out.getvalue()


def screenshot(width: int = 2880, height: int = 1800, seed: int = 7) -> Image.Image:
    """A laptop screen: flat panels, text-like strokes, a photo inset."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (246, 246, 248))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 80), fill=(40, 44, 52))
    draw.rectangle((0, 80, 420, height), fill=(230, 232, 236))
    for row in range(120, height - 40, 36):
        for x in range(460, width - 600, 14):
            if rng.random() < 0.7:
                draw.rectangle((x, row, x + 9, row + 16), fill=(30, 30, 30))
    image.paste(picture(560, 420, seed), (width - 580, 120))
    return image


def corpus() -> list[Photo]:
    """The bench's photos: 12 and 48 MP JPEGs turned by EXIF, a 12 MP HEIC, an AVIF, a PNG
    screenshot."""
    twelve = picture(4032, 3024, 1)
    forty_eight = picture(8064, 6048, 2)
    shot = screenshot()
    return [
        Photo("12mp.jpg", jpeg(twelve, orientation=6), (3024, 4032)),
        Photo("48mp.jpg", jpeg(forty_eight, orientation=6), (6048, 8064)),
        Photo("12mp.heic", heic(twelve), (4032, 3024)),
        Photo("12mp.avif", avif(twelve), (4032, 3024)),
        Photo("screenshot.png", png(shot), shot.size),
    ]
