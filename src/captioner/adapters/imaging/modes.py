"""Pillow image modes made displayable: shared by the decoder and the thumbnail store.

A helper module, not an adapter (like ``durable_files``): it implements no port. Both the
decoder (8-bit RGB for the model) and the thumbnail store (8-bit RGB or RGBA for WebP) need
every Pillow mode turned into 8-bit colour the same way; only what happens to transparency
differs, so that is a parameter.
"""

from __future__ import annotations

from PIL import Image

# 16- and 32-bit integer grey, in any byte order.
INTEGER_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_WHITE = (255, 255, 255)


def has_transparency(image: Image.Image) -> bool:
    """True when some pixels may be (partly) see-through: an alpha band or a transparent key."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_8bit_colour(image: Image.Image, *, keep_alpha: bool) -> Image.Image:
    """``image`` as 8-bit ``RGB``; as ``RGBA`` instead when ``keep_alpha`` and it has transparency.

    Without ``keep_alpha``, transparency is flattened onto white: black behind a transparent
    logo misleads a captioning model. High-bit-depth grey keeps its top 8 bits; float grey is
    stretched to 0..255. The result may be ``image`` itself when it is already what is wanted.
    """
    if image.mode in INTEGER_GREY_MODES:
        # Pillow's "point" works on "I" only, so widen first; converting straight to "L"
        # would clip everything to white.
        wide = image if image.mode == "I" else image.convert("I")
        return wide.point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    if image.mode == "F":
        # Float samples have no fixed range (often 0..1): stretch what is there to 0..255.
        low, high = (float(value) for value in image.getextrema())  # type: ignore[arg-type]
        scale = 255 / (high - low) if high > low else 0.0
        offset = -low * scale
        return image.point(lambda value: value * scale + offset).convert("L").convert("RGB")
    if has_transparency(image):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        if keep_alpha:
            return rgba
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")
