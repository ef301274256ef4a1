"""Caption text rules that hold whatever model wrote it: only the answer is kept (no template
markers, role name or echoed instruction), and a caption that loops is cut."""

from __future__ import annotations

import re

# What chat models are asked when the request has no prompt of its own.
DEFAULT_INSTRUCTION = "Describe this image in one sentence."
_WORD_EDGES = re.compile(r"^\W+|\W+$")
# Special tokens and template markers: <image>, </s>, <|im_end|>, <end_of_utterance>, <CAPTION>.
_SCAFFOLDING = re.compile(r"<\|?/?[A-Za-z_][\w.-]*\|?>")
_ROLE_PREFIX = re.compile(r"^assistant\s*(?::|\n)\s*", re.IGNORECASE)
# A phrase this long said twice back to back is a loop, not style ("a dog on a mat a dog on a
# mat"); shorter ones must come three times ("very very" is English, "dog dog dog" is not).
LONG_PHRASE_WORDS = 4


def _key(word: str) -> str:
    return _WORD_EDGES.sub("", word).lower()


def _first_loop(keys: list[str]) -> tuple[int, int] | None:
    """(start, phrase length) of the earliest phrase repeated back to back, shortest first."""
    count = len(keys)
    for start in range(count):
        for size in range(1, (count - start) // 2 + 1):
            copies = 1
            while (
                start + (copies + 1) * size <= count
                and keys[start + copies * size : start + (copies + 1) * size]
                == keys[start : start + size]
            ):
                copies += 1
            if copies >= 3 or (copies >= 2 and size >= LONG_PHRASE_WORDS):
                return start, size
    return None


def cut_repetition(text: str) -> str:
    """Keep the first copy of any phrase the text repeats back to back, and drop the rest.

    Words compare without case and surrounding punctuation, so "Dog, dog. dog" is a loop.
    Text without such a loop comes back unchanged.
    """
    words = text.split()
    while True:
        loop = _first_loop([_key(word) for word in words])
        if loop is None:
            break
        start, size = loop
        words = words[: start + size]
    if len(words) == len(text.split()):
        return text
    return " ".join(words).rstrip(",;:-")


def clean_caption(text: str, instruction: str = "") -> str:
    """The answer alone: no special tokens, template markers, leading role name or echoed
    ``instruction``, whitespace runs as one space, and no loop of repeats."""
    text = _SCAFFOLDING.sub(" ", text).strip()
    instruction = _SCAFFOLDING.sub(" ", instruction).strip()
    if instruction and text.startswith(instruction):
        text = text[len(instruction) :]
    return cut_repetition(" ".join(_ROLE_PREFIX.sub("", text.strip()).split()))
