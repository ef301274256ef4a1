"""Text rules and limits: how prompts and names are cleaned, how much one call may ask."""

from __future__ import annotations

from captioner.domain.errors import InvalidRequest

MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
MAX_PROMPT_CHARS = 300
MAX_NAME_CHARS = 255
# A caption a person writes: a few sentences, well past any model's, short of an essay.
MAX_CAPTION_CHARS = 2000
MAX_KNOWN_DIGESTS = 1000  # one lookup query; a client with more asks in chunks
# Ids are int64: what both catalogues' integer keys hold, and what the wire accepts.
MAX_IMAGE_ID = 2**63 - 1


def clean_prompt(prompt: str | None) -> str:
    """Prompts are short text; whitespace is normalised so equal prompts dedupe together."""
    text = " ".join((prompt or "").split())
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is longer than {MAX_PROMPT_CHARS} characters.")
    return text


def clean_original_name(name: str | None) -> str | None:
    """Keep the client's file name as display metadata only: base name, printable, capped."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in base if ch.isprintable())
    trimmed = printable.strip().strip(".")[:MAX_NAME_CHARS]
    return trimmed or None


def clean_caption(text: str) -> str:
    """A caption a person wrote: surrounding whitespace dropped; not blank, not too long."""
    caption = text.strip()
    if not caption:
        raise InvalidRequest("The description is empty: write what the image shows.")
    if len(caption) > MAX_CAPTION_CHARS:
        raise InvalidRequest(
            f"The description is {len(caption)} characters; the limit is {MAX_CAPTION_CHARS}."
        )
    return caption
