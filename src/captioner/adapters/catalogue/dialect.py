"""What differs between the SQL engines in the queries they share: marks, clocks, codecs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """How one engine spells the few things the shared queries leave open."""

    mark: str  # the parameter placeholder
    # The current time as SQL, in the type of caption_claims.expires_at.
    clock: str
    # ``clock`` plus a parameter's seconds: where a lease taken now ends.
    lease_end: str
    # The current time as SQL, in the type of the timestamp columns (created_at, expires_at).
    stamp_now: str
    stamp_type: str  # the SQL type of timestamp columns
    # Python values to and from the database's timestamp and JSON columns.
    encode_time: Callable[[datetime], object]
    decode_time: Callable[[Any], datetime]
    encode_json: Callable[[dict[str, Any]], object]
    decode_json: Callable[[Any], dict[str, Any]]
    # ``column`` is one of ``values``: the SQL and its parameters.
    one_of: Callable[[str, Sequence[object]], tuple[str, Sequence[object]]]
    # A schema file's statements, as the driver takes them.
    statements: Callable[[str], Iterable[str]]

    def marks(self, count: int) -> str:
        """``count`` placeholders, comma-separated."""
        return ", ".join([self.mark] * count)
