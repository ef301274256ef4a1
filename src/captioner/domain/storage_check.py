"""Storage check and repair: where the catalogue and the stored files disagree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from captioner.domain.layout import StoredPath
from captioner.domain.model import ImageDigest
from captioner.domain.one_run_per_key import BytesLocks
from captioner.domain.ports import CaptionRepository, ImageStore, ThumbnailStore

# Younger files without a row belong to uploads in flight (file written, row coming).
ORPHAN_GRACE_S = 300.0


@dataclass(frozen=True)
class StorageProblem:
    """One disagreement between the catalogue and the files that ``check`` found."""

    kind: str  # "orphan_file", "missing_file", "hash_mismatch" or "orphan_thumbnail"
    path: str  # the stored path; for "orphan_thumbnail" the digest of the bytes it shows
    record_id: int | None = None


OnProblem = Callable[[StorageProblem], None]  # told each problem as it is found


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


@dataclass(frozen=True)
class StorageCheck:
    """Compares catalogue and files and, with repair, lets go of what nothing uses.

    ``forget(sha256, path, record_id)`` is the service's one rule for letting bytes go (the
    record, then the file once no record uses it); ``locks`` are the service's bytes locks.
    """

    store: ImageStore
    catalogue: CaptionRepository
    thumbnails: ThumbnailStore | None
    locks: BytesLocks
    forget: Callable[[str, str, int | None], object]

    def run(
        self, repair: bool, on_problem: OnProblem | None, orphan_grace_s: float, verify: bool
    ) -> CheckReport:
        """What CaptionService.check says; ``verify`` re-reads every file to compare hashes."""
        problems: list[StorageProblem] = []
        # Thumbnails are listed before the records: one made meanwhile belongs to a record
        # the listing below sees. A thumbnail is a cache, so removing one in use only costs
        # a second render.
        thumbnails = list(self.thumbnails.digests()) if self.thumbnails is not None else []
        referenced: set[str] = set()
        digests_in_use: set[str] = set()
        sha256_of: dict[int | None, str] = {}
        digests: dict[str, str | None] = {}  # several records (prompts) share one file
        records = 0
        for record in self.catalogue.all_records():
            records += 1
            referenced.add(record.path)
            digests_in_use.add(record.sha256)
            sha256_of[record.id] = record.sha256
            if record.path not in digests:
                digests[record.path] = self._stored_digest(record.path, verify)
            stored = digests[record.path]
            if stored is None:
                problems.append(StorageProblem("missing_file", record.path, record.id))
            elif verify and stored != record.sha256:
                problems.append(StorageProblem("hash_mismatch", record.path, record.id))
        files = 0
        for path in self.store.paths():
            files += 1
            if path not in referenced and self._age_s(path) >= orphan_grace_s:
                problems.append(StorageProblem("orphan_file", path))
        problems += [
            StorageProblem("orphan_thumbnail", digest.hex)
            for digest in thumbnails
            if digest.hex not in digests_in_use
        ]
        for problem in problems:
            if on_problem is not None:
                on_problem(problem)
            if repair:
                self._repair(problem, sha256_of.get(problem.record_id))
        return CheckReport(files, records, tuple(problems), repaired=repair)

    def _repair(self, problem: StorageProblem, sha256: str | None) -> None:
        if problem.kind == "orphan_thumbnail" and self.thumbnails is not None:
            with self.locks.of(problem.path):
                self.thumbnails.delete(ImageDigest(problem.path))
            return
        # An orphan file has no record to name its digest; the store names files by it.
        self.forget(sha256 or _digest_named_in(problem.path), problem.path, problem.record_id)

    def _stored_digest(self, path: str, verify: bool) -> str | None:
        """The file's SHA-256 ("" when not verified), or None when it is gone."""
        try:
            if not self.store.exists(path):
                return None
            return self.store.digest_of(path).hex if verify else ""
        except FileNotFoundError:  # deleted by a live server between the two calls
            return None

    def _age_s(self, path: str) -> float:
        try:
            return self.store.age_s(path)
        except FileNotFoundError:  # deleted meanwhile: not an orphan any more
            return 0.0


def _digest_named_in(path: str) -> str:
    """The digest a stored file is named by, or the path itself (a temp file's name)."""
    try:
        return StoredPath.parse(path).digest.hex
    except ValueError:
        return path
