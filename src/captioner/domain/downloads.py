"""How a stored image is named when it leaves the service: the file name a download is
offered under, and the Content-Disposition value that carries it (RFC 6266, RFC 8187)."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from captioner.domain.model import ImageRecord

# Far more than any real name needs; even percent-encoded (12 characters per character at
# worst) the header stays well below the 8 KB that servers and proxies accept.
MAX_DOWNLOAD_NAME_CHARS = 200
# An extension is kept when a long name is cut, unless it is itself absurdly long.
_MAX_EXTENSION_CHARS = 16
_SEPARATORS = re.compile(r"[/\\]")
# The plain `filename=` is for clients that ignore `filename*`: ASCII, nothing to escape or
# misread (no quotes, backslashes, %, ; or ,), so no parser can get it wrong.
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9 ._()+\-@&=!~'\[\]]")
_RUNS = re.compile(r"_{2,}")


def download_name(record: ImageRecord) -> str:
    """The file name the image's bytes are offered under: the name it was uploaded with,
    made safe, else its digest; with the stored file's extension when the name has none."""
    name = safe_file_name(record.original_name or "")
    if not name:
        return digest_name(record)
    if "." not in name:
        return _capped(f"{name}.{record.path.rsplit('.', 1)[-1]}")
    return name


def digest_name(record: ImageRecord) -> str:
    """The image's SHA-256 with its stored file's extension: a name only these bytes have."""
    return f"{record.sha256}.{record.path.rsplit('.', 1)[-1]}"


def safe_file_name(name: str) -> str:
    """``name`` as a bare file name: its last path segment, printable characters only (no
    CR/LF, no undecodable bytes), no leading dots, at most MAX_DOWNLOAD_NAME_CHARS; may be ''."""
    base = _SEPARATORS.split(name)[-1]
    # isprintable is False for controls, line separators and lone surrogates (the bytes of
    # a name that was not UTF-8), so none of them reaches a header or a file system.
    printable = "".join(character for character in base if character.isprintable())
    return _capped(printable.strip().strip(".").strip())


def content_disposition(name: str, disposition: str = "inline") -> str:
    """The Content-Disposition value offering the bytes as ``name``.

    ``filename*=UTF-8''...`` carries the name exactly (RFC 8187 percent-encoding); the plain
    ``filename="..."`` before it is an ASCII look-alike for clients that ignore ``filename*``.
    """
    safe = safe_file_name(name) or "image"
    plain = _plain(safe)
    value = f'{disposition}; filename="{plain}"'
    if plain != safe:
        value += f"; filename*=UTF-8''{quote(safe, safe='')}"
    return value


def _plain(name: str) -> str:
    # NFKD splits accents off their letters (café -> cafe); what is left outside ASCII
    # becomes '_'. Compatibility forms may decompose into separators: filtered after.
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = _RUNS.sub("_", _NOT_PLAIN.sub("_", letters)).strip().strip(".").strip()
    return _capped(plain) or "image"


def _capped(name: str) -> str:
    if len(name) <= MAX_DOWNLOAD_NAME_CHARS:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and len(extension) <= _MAX_EXTENSION_CHARS:
        return f"{stem[: MAX_DOWNLOAD_NAME_CHARS - len(extension) - 1].rstrip()}.{extension}"
    return name[:MAX_DOWNLOAD_NAME_CHARS].rstrip()
