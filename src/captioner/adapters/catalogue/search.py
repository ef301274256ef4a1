"""What a person typed into the search box, as a query neither FTS5 nor tsquery can choke on."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)
# Enough for any real search; a pasted essay must not become a query of thousands of terms.
_MOST_WORDS = 32


def words_of(text: str) -> list[str]:
    """The words of ``text``: runs of letters and digits, so every operator becomes plain text."""
    return _WORD.findall(text)[:_MOST_WORDS]


def fts5_query(text: str) -> str | None:
    """An FTS5 MATCH for ``text``: each word quoted, as a prefix, ANDed; None without words."""
    return _prefixes(words_of(text), '"', '"*', " ")


def tsquery(text: str) -> str | None:
    """A ``to_tsquery('simple', ...)`` for ``text``: the same rule as ``fts5_query``.

    ``websearch_to_tsquery`` cannot express prefixes, and ``to_tsquery`` on raw input fails
    on its operators; quoting every word makes any input a valid query. Lower-cased because
    a quoted tsquery lexeme is matched as written.
    """
    return _prefixes(words_of(text.lower()), "'", "':*", " & ")


def _prefixes(words: list[str], quote: str, suffix: str, joiner: str) -> str | None:
    # A quote inside a word is doubled: the one escape both query languages share.
    if not words:
        return None
    return joiner.join(quote + word.replace(quote, quote * 2) + suffix for word in words)


@dataclass(frozen=True)
class FullText:
    """How one engine finds captions by their words, in the listing's search query.

    ``source`` joins the matching captions as ``c``; ``matches`` keeps them; ``rank`` orders
    them best first. ``query`` turns what a person typed into the one parameter they take.
    """

    query: Callable[[str], str | None]
    source: str
    matches: str
    rank: str


FTS5 = FullText(
    query=fts5_query,
    source="images_fts JOIN images AS c ON c.id = images_fts.rowid",
    matches="images_fts MATCH ?",
    rank="bm25(images_fts)",
)
TSVECTOR = FullText(
    query=tsquery,
    source="images AS c CROSS JOIN to_tsquery('simple', %s) AS q",
    matches="c.search @@ q",
    rank="ts_rank(c.search, q) DESC",
)
