"""Backup and restore over fakes: a file gone or changed since the snapshot stops the backup
before its manifest, and the manifest reads back as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.backups import Manifest, back_up, read_manifest, restore
from captioner.domain.errors import BackupRefused
from captioner.domain.layout import StoredPath
from captioner.domain.model import CatalogueSnapshot, ImageDigest
from tests.support.fakes import InMemoryImageStore


class FakeCatalogueBackups:
    """A catalogue whose copy is a small text file naming the paths it needs."""

    engine = "fake"
    file_name = "catalogue.txt"

    def __init__(self, paths: set[str]) -> None:
        self.paths = paths
        self.restored: str | None = None

    def snapshot(self, target: Path) -> CatalogueSnapshot:
        target.write_text("\n".join(sorted(self.paths)))
        return CatalogueSnapshot(
            self.engine, 3, len(self.paths), len(self.paths), 1, frozenset(self.paths)
        )

    def problem_with(self, copy: Path) -> str | None:
        return None

    def holds_a_library(self) -> bool:
        return self.restored is not None

    def restore(self, copy: Path) -> None:
        self.restored = copy.read_text()


def stored(store: InMemoryImageStore, content: bytes) -> str:
    path = str(StoredPath(ImageDigest.of_bytes(content), "png"))
    store.files[path] = content
    return path


def test_a_file_deleted_since_the_snapshot_stops_the_backup_before_its_manifest(
    tmp_path: Path,
) -> None:
    store = InMemoryImageStore()
    kept, deleted = stored(store, b"kept"), stored(store, b"deleted")
    catalogue = FakeCatalogueBackups({kept, deleted})
    store.delete(deleted)

    with pytest.raises(BackupRefused, match="is gone") as refused:
        back_up(catalogue, store, tmp_path / "backup", "1.0")

    assert deleted in str(refused.value)
    assert not (tmp_path / "backup" / "manifest.json").exists()
    with pytest.raises(BackupRefused, match="did not finish"):
        read_manifest(tmp_path / "backup")


def test_a_stored_file_whose_bytes_changed_stops_the_backup(tmp_path: Path) -> None:
    store = InMemoryImageStore()
    path = stored(store, b"original")
    store.files[path] = b"changed on disk"

    with pytest.raises(BackupRefused, match="no longer match their SHA-256"):
        back_up(FakeCatalogueBackups({path}), store, tmp_path / "backup", "1.0")


def test_the_manifest_reads_back_as_written_and_restore_puts_every_file_back(
    tmp_path: Path,
) -> None:
    store = InMemoryImageStore()
    paths = {stored(store, bytes([n]) * n) for n in range(1, 6)}
    summary = back_up(FakeCatalogueBackups(paths), store, tmp_path / "backup", "1.0")
    target_store, target = InMemoryImageStore(), FakeCatalogueBackups(set())

    restored = restore(tmp_path / "backup", target, target_store)

    assert read_manifest(tmp_path / "backup") == summary.manifest
    assert Manifest.from_json(summary.manifest.to_json()) == summary.manifest
    assert (summary.manifest.records, summary.manifest.file_bytes) == (5, 15)
    assert restored.manifest == summary.manifest
    assert target_store.files == store.files
    assert target.restored == "\n".join(sorted(paths))


def test_a_backup_of_another_engine_is_refused_naming_db_copy(tmp_path: Path) -> None:
    store = InMemoryImageStore()
    back_up(FakeCatalogueBackups({stored(store, b"x")}), store, tmp_path / "backup", "1.0")
    other = FakeCatalogueBackups(set())
    other.engine = "sqlite"

    with pytest.raises(BackupRefused, match="db copy"):
        restore(tmp_path / "backup", other, InMemoryImageStore())
