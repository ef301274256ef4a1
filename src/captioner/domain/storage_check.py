"""Storage check and repair: where the catalogue and the stored files disagree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StorageProblem:
    """One disagreement between the catalogue and the files that ``check`` found."""

    kind: str  # "orphan_file", "missing_file", "hash_mismatch" or "orphan_thumbnail"
    path: str  # the stored path; for "orphan_thumbnail" the digest of the bytes it shows
    record_id: int | None = None


@dataclass(frozen=True)
class CheckReport:
    """What a storage check found and, with repair, what it fixed."""

    files_seen: int
    records_seen: int
    problems: tuple[StorageProblem, ...]
    repaired: bool

    @property
    def ok(self) -> bool:
        return not self.problems
