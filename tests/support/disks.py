"""Disks that fail the way real ones do: a tiny tmpfs that fills up, or one mounted read-only.

Mounting needs root (and a kernel that allows it, as here and in CI). Where it is not
allowed, the same faults are injected into the stores' durable write instead (ENOSPC,
EROFS), so the tests still run the code that answers them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from captioner.adapters.storage.durable_files import write_atomically


class FaultyDisk:
    """A directory on its own small file system, which a test fills or makes read-only."""

    def __init__(self, directory: Path, size_kb: int) -> None:
        self.directory = directory
        self.size_kb = size_kb
        self.mounted = False
        self._injected: int | None = None

    def mount(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_kb}k", "tmpfs", str(self.directory)],
            capture_output=True,
            check=False,
        )
        self.mounted = done.returncode == 0

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.directory)], check=True)
            self.mounted = False

    def fill(self) -> None:
        """Use up every byte: writes fail with ENOSPC from now on."""
        if not self.mounted:
            self._injected = errno.ENOSPC
            return
        with contextlib.suppress(OSError), (self.directory / "filler").open("wb", 0) as filler:
            while True:
                filler.write(b"\0" * 4096)

    def make_read_only(self) -> None:
        """Writes fail with EROFS from now on; what is there stays readable."""
        if not self.mounted:
            self._injected = errno.EROFS
            return
        subprocess.run(["mount", "-o", "remount,ro", str(self.directory)], check=True)

    def write(self, target: Path, content: BinaryIO | bytes) -> None:
        """The stores' durable write, failing as the injected fault says when not mounted."""
        if self._injected is not None and target.is_relative_to(self.directory):
            raise OSError(self._injected, os.strerror(self._injected), str(target))
        write_atomically(target, content)


@contextlib.contextmanager
def faulty_disk(directory: Path, size_kb: int = 512) -> Iterator[FaultyDisk]:
    disk = FaultyDisk(directory, size_kb)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()
