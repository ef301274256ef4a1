"""glibc's allocator told to keep a model's freed working memory for the next image, instead of
handing it back to the kernel and taking page faults to get it again."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap and are reused once freed; glibc's own ceiling for
# the setting (HEAP_MAX_SIZE / 2 on 64-bit). One image's largest activation in the BLIP-base ViT
# (12 x 577 x 577 float32 attention scores) is 16 MB.
REUSE_UP_TO = 32 << 20
# Freed memory at the top of a heap goes back to the kernel only beyond this much.
KEEP_UP_TO = 1 << 30
TOP_PAD = 64 << 20  # asked of the kernel beyond each need, so growing the heap is rare

# The same settings given as environment variables (read by glibc at start): the operator's.
_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for a model serving one image after another; True if applied.

    Without it, glibc gives large freed blocks back to the kernel and maps them afresh for the
    next image, a page fault for every page it touches again (see docs/performance.md for what
    that costs). The arithmetic is untouched. Process-wide and lasting; skipped off glibc and
    when the environment already sets any of these (MALLOC_*_ variables)."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _ENVIRONMENT):
        log.info("malloc settings left as the environment sets them")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (M_MMAP_THRESHOLD, REUSE_UP_TO),
            (M_TRIM_THRESHOLD, KEEP_UP_TO),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    if applied:
        log.info("malloc keeps freed blocks up to %d MB for reuse", REUSE_UP_TO >> 20)
    return applied
