"""HEIF-family files (HEIC, HEIF, AVIF) read from their boxes: type, declared size, completeness.

A helper module, not an adapter (like ``modes``): the decoder and the thumbnail renderer share
it. HEIC and AVIF are ISO base media files: an ``ftyp`` box names the brand, a ``meta`` box
lists the items (the primary image, its grid tiles, thumbnails), each item's declared size
(``ispe``) and where its coded bytes lie (``iloc``). All of that is read here from the header,
before libheif or libavif decode a pixel, so a declared 100000x100000 image is refused by its
numbers and a file cut short is found damaged even where the codec would fill in the gaps.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import BinaryIO

# Brands of the coded image inside. "mif1"/"msf1" only say "an image file" and come with one
# of these among the compatible brands.
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AV1_BRANDS = frozenset({b"avif", b"avis"})
_GENERIC_BRANDS = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})
# Video containers share the ftyp box; named so an upload of a clip is told what it is.
VIDEO_BRANDS = frozenset(
    {b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"qt  ", b"3gp4", b"3gp5", b"3g2a", b"M4V "}
)

# An iPhone's meta box is a few KiB; a 48 MP grid's is under 20 KiB. A far larger one is no
# photo, and reading it whole would let an upload choose how much memory a header costs.
_MAX_META_BYTES = 4 * 1024 * 1024
# Bounds on the work a header may ask for: a grid has at most 256x256 tiles (one extent each);
# writers put meta among the first few boxes. Past these a file is hostile, not a photo.
_MAX_EXTENTS = 200_000
_MAX_TOP_LEVEL_BOXES = 1_000


class DamagedHeif(ValueError):
    """The boxes of a HEIF-family file contradict themselves or the file is cut short."""


@dataclass(frozen=True)
class HeifHeader:
    """What a HEIF-family file's boxes declare, read without decoding."""

    format: str  # "HEIC", "HEIF" or "AVIF": the name in the accepted image types
    width: int  # of the primary image as stored (before any irot turn), 0 if not declared
    height: int
    largest_pixels: int  # the most pixels any item declares (primary, grid output, tile)


def brand_format(head: bytes) -> str | None:
    """The type the ``ftyp`` box at the start of ``head`` names (HEIC, HEIF, AVIF), or None."""
    brands = _brands(head)
    if not brands:
        return None
    major, compatible = brands[0], set(brands[1:])
    if major in _AV1_BRANDS or (major in _GENERIC_BRANDS and compatible & _AV1_BRANDS):
        return "AVIF"
    if major in _HEVC_BRANDS or (major in _GENERIC_BRANDS and compatible & _HEVC_BRANDS):
        return "HEIC"
    if major in _GENERIC_BRANDS:
        return "HEIF"  # another codec in a HEIF container (JPEG, uncompressed): libheif's call
    return None


def is_video(head: bytes) -> bool:
    """True when ``head`` starts like an MP4/QuickTime/3GP video rather than an image."""
    brands = _brands(head)
    return bool(brands) and brands[0] in VIDEO_BRANDS


def _brands(head: bytes) -> list[bytes]:
    if len(head) < 16 or head[4:8] != b"ftyp":
        return []
    size = int.from_bytes(head[:4], "big")
    end = min(size, len(head)) if size >= 16 else 16
    return [head[8:12], *(head[i : i + 4] for i in range(16, end - 3, 4))]


def read_header(content: BinaryIO, head: bytes) -> HeifHeader | None:
    """The declared sizes of a HEIF-family file; None when ``head`` is no such file.

    Leaves ``content`` at position 0. Raises DamagedHeif for boxes that overrun the file, a
    missing ``meta`` box, or coded bytes the ``iloc`` box places beyond the end of the file.
    """
    fmt = brand_format(head)
    if fmt is None:
        return None
    try:
        total = content.seek(0, 2)
        meta = _find_meta(content, total)
        if meta is None:
            return HeifHeader(fmt, 0, 0, 0)
        return _parse_meta(content, meta, total, fmt)
    except (struct.error, IndexError) as error:
        raise DamagedHeif(f"unreadable boxes: {error}") from None
    finally:
        content.seek(0)


def _find_meta(content: BinaryIO, total: int) -> bytes | None:
    """The meta box's body; None for an image sequence kept only as a track (``moov``)."""
    offset = 0
    has_track = False
    for _ in range(_MAX_TOP_LEVEL_BOXES):
        if offset + 8 > total:
            break
        content.seek(offset)
        size, kind, header = _box_header(content.read(16), offset, total)
        if kind == b"meta":
            if size > _MAX_META_BYTES:
                raise DamagedHeif(f"a {size:,}-byte meta box")
            content.seek(offset + header)
            body = content.read(size - header)
            if len(body) != size - header:
                raise DamagedHeif("the meta box is cut short")
            return body
        has_track = has_track or kind == b"moov"
        offset += size
    if has_track:
        return None  # sizes are in the track's boxes; the codec's own limits and Pillow's apply
    raise DamagedHeif("no meta box (the file is cut short or not an image)")


def _box_header(data: bytes, offset: int, total: int) -> tuple[int, bytes, int]:
    """(size, type, header length) of the box at ``offset`` whose first bytes are ``data``."""
    if len(data) < 8:
        raise DamagedHeif("a box header is cut short")
    size, kind = struct.unpack(">I4s", data[:8])
    header = 8
    if size == 1:
        if len(data) < 16:
            raise DamagedHeif("a box header is cut short")
        (size,) = struct.unpack(">Q", data[8:16])
        header = 16
    elif size == 0:
        size = total - offset  # "to the end of the file"
    if size < header or offset + size > total:
        raise DamagedHeif(f"the {kind.decode('latin-1')!r} box runs past the end of the file")
    return size, kind, header


def _children(data: bytes, start: int = 0) -> dict[bytes, bytes]:
    """The boxes in ``data[start:]`` by type (the first of each type), bodies without headers."""
    boxes: dict[bytes, bytes] = {}
    offset = start
    while offset + 8 <= len(data):
        size, kind, header = _box_header(data[offset : offset + 16], offset, len(data))
        boxes.setdefault(kind, data[offset + header : offset + size])
        offset += size
    return boxes


def _box_list(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every box in ``data`` in order, as (type, body): ipco's properties are indexed by place."""
    boxes: list[tuple[bytes, bytes]] = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind, header = _box_header(data[offset : offset + 16], offset, len(data))
        boxes.append((kind, data[offset + header : offset + size]))
        offset += size
    return boxes


def _parse_meta(content: BinaryIO, meta: bytes, total: int, fmt: str) -> HeifHeader:
    boxes = _children(meta, 4)  # meta is a full box: version and flags come first
    primary = _primary_item(boxes.get(b"pitm"))
    sizes = _item_sizes(boxes.get(b"iprp"))
    locations = _item_locations(boxes.get(b"iloc", b""), total)
    largest = max((w * h for w, h in sizes.values()), default=0)
    for item in _grid_items(boxes.get(b"iinf")):
        grid = _grid_output(content, boxes.get(b"idat", b""), locations.get(item))
        if grid is not None:
            largest = max(largest, grid[0] * grid[1])
            if item not in sizes:
                sizes[item] = grid
    width, height = sizes.get(primary, (0, 0)) if primary is not None else (0, 0)
    return HeifHeader(fmt, width, height, largest)


def _primary_item(pitm: bytes | None) -> int | None:
    if pitm is None or len(pitm) < 6:
        return None
    return int(struct.unpack(">H", pitm[4:6])[0]) if pitm[0] == 0 else _u32(pitm, 4)


def _item_sizes(iprp: bytes | None) -> dict[int, tuple[int, int]]:
    """Each item's declared width and height, from its ``ispe`` property."""
    if iprp is None:
        return {}
    boxes = _children(iprp)
    properties = _box_list(boxes.get(b"ipco", b""))
    ipma = boxes.get(b"ipma", b"")
    sizes: dict[int, tuple[int, int]] = {}
    if len(ipma) < 8:
        return sizes
    version, flags = ipma[0], int.from_bytes(ipma[1:4], "big")
    count = _u32(ipma, 4)
    offset = 8
    for _ in range(count):
        if version < 1:
            item = int(struct.unpack(">H", ipma[offset : offset + 2])[0])
            offset += 2
        else:
            item = _u32(ipma, offset)
            offset += 4
        associations = ipma[offset]
        offset += 1
        for _ in range(associations):
            if flags & 1:
                index = int(struct.unpack(">H", ipma[offset : offset + 2])[0]) & 0x7FFF
                offset += 2
            else:
                index = ipma[offset] & 0x7F
                offset += 1
            if 0 < index <= len(properties) and properties[index - 1][0] == b"ispe":
                body = properties[index - 1][1]
                sizes[item] = (_u32(body, 4), _u32(body, 8))
    return sizes


def _item_locations(iloc: bytes, total: int) -> dict[int, tuple[int, int, int]]:
    """Each item's (construction method, first offset, length); checks every file extent fits.

    A file cut short keeps its header but loses the coded bytes at its end: an extent that
    ends past the file is what says so, before any decoder is asked.
    """
    locations: dict[int, tuple[int, int, int]] = {}
    if len(iloc) < 8:
        return locations
    version = iloc[0]
    offset_size, length_size = iloc[4] >> 4, iloc[4] & 0x0F
    base_size, index_size = iloc[5] >> 4, (iloc[5] & 0x0F) if version in (1, 2) else 0
    if version < 2:
        count, cursor = int(struct.unpack(">H", iloc[6:8])[0]), 8
    else:
        count, cursor = _u32(iloc, 6), 10
    budget = _MAX_EXTENTS
    for _ in range(count):
        id_size = 2 if version < 2 else 4
        item = _uint(iloc, cursor, id_size)
        cursor += id_size
        method = 0
        if version in (1, 2):
            method = _uint(iloc, cursor, 2) & 0x0F
            cursor += 2
        cursor += 2  # data_reference_index
        base = _uint(iloc, cursor, base_size)
        cursor += base_size
        extents = _uint(iloc, cursor, 2)
        cursor += 2
        budget -= extents
        if budget < 0:
            raise DamagedHeif("the iloc box lists more extents than any image has")
        first: tuple[int, int] | None = None
        for _ in range(extents):
            cursor += index_size
            start = base + _uint(iloc, cursor, offset_size)
            cursor += offset_size
            length = _uint(iloc, cursor, length_size)
            cursor += length_size
            if method == 0 and start + length > total:
                raise DamagedHeif("the image data ends before the file says it does")
            first = first or (start, length)
        if first is not None:
            locations[item] = (method, *first)
    return locations


def _grid_items(iinf: bytes | None) -> list[int]:
    """The items that are grids of tiles (an iPhone photo's primary image is one)."""
    if iinf is None or len(iinf) < 6:
        return []
    start = 6 if iinf[0] == 0 else 8
    grids = []
    for kind, body in _box_list(iinf[start:]):
        if kind != b"infe" or len(body) < 4 or body[0] < 2:
            continue
        if body[0] == 2:
            item, item_type = int(struct.unpack(">H", body[4:6])[0]), body[8:12]
        else:
            item, item_type = _u32(body, 4), body[10:14]
        if item_type == b"grid":
            grids.append(item)
    return grids


def _grid_output(
    content: BinaryIO, idat: bytes, location: tuple[int, int, int] | None
) -> tuple[int, int] | None:
    """A grid's declared output size, from its descriptor (kept in idat or in the file)."""
    if location is None:
        return None
    method, start, length = location
    if method == 1:
        data = idat[start : start + min(length or 12, 12)]
    elif method == 0:
        content.seek(start)
        data = content.read(12)
    else:
        return None
    if len(data) < 8:
        raise DamagedHeif("a grid descriptor is cut short")
    if data[1] & 1:  # 32-bit output size
        return _u32(data, 4), _u32(data, 8)
    return int(struct.unpack(">H", data[4:6])[0]), int(struct.unpack(">H", data[6:8])[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack(">I", data[offset : offset + 4])[0])


def _uint(data: bytes, offset: int, size: int) -> int:
    if size == 0:
        return 0
    if offset + size > len(data):
        raise DamagedHeif("the iloc box is cut short")
    return int.from_bytes(data[offset : offset + size], "big")


def is_size_refusal(error: Exception) -> bool:
    """True when libheif refused a file by its security limits (sizes, tiles, memory)."""
    return "security limit" in str(error).lower()


_REGISTER_LOCK = threading.Lock()
_registered = False


def register_heif_opener() -> None:
    """Teach Pillow to open HEIC/HEIF through pillow-heif (libheif + libde265), once per process.

    Pillow's registry is process-wide; registering is idempotent, so the decoder and the
    thumbnail renderer both call this. Depth maps, auxiliary images and embedded thumbnails are
    not read: the captioner and the thumbnail only want the primary image.
    """
    global _registered
    with _REGISTER_LOCK:
        if _registered:
            return
        from pillow_heif import register_heif_opener as register

        # libheif's own security limits stay on (a second wall behind read_header's checks).
        register(thumbnails=False, depth_images=False, aux_images=False)
        _registered = True
