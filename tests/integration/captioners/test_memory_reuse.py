"""After keep_freed_memory, big blocks come from the process's heap and are reused, not mapped
afresh from the kernel for every image (checked in a fresh interpreter, where glibc's defaults
would map them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# Allocates a 20 MB block and reports how many bytes glibc holds in separate mappings
# (mallinfo2's hblkhd) before and while the block is held.
PROBE = """
import ctypes, sys
from captioner.adapters.captioners.transformers.malloc import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
before = libc.mallinfo2().hblkhd
block = libc.malloc(20 << 20)
print(applied, libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def probe(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    applied, mapped = done.stdout.split()
    return applied, int(mapped)


def test_a_big_block_comes_from_the_heap_once_tuned() -> None:
    applied, mapped = probe("default")
    assert applied == "False"
    assert mapped >= 20 << 20  # glibc's default: a big block is a mapping of its own

    assert probe("tuned") == ("True", 0)


def test_settings_from_the_environment_are_left_alone() -> None:
    import os

    env = {**os.environ, "MALLOC_TOP_PAD_": "0"}

    applied, mapped = probe("tuned", env)

    assert applied == "False"
    assert mapped >= 20 << 20  # glibc's default: a big block is a mapping of its own
