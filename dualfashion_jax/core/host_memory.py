"""Keep freed host memory inside the process (glibc `mallopt`), so XLA:CPU's per-step temporaries are reused
instead of being returned to the kernel and page-faulted back in on every step (docs/performance.md §8).

Measured on the small CPU train step: 72,661 minor page faults per step with glibc's defaults (large buffers
are mmap'ed and unmapped, worker-thread arenas shrink), 0 with these options, and a 15-20 % shorter step.
The process then keeps its peak heap (memory is not returned to the OS while it runs). Opt out with
`DUALFASHION_JAX_MALLOC=default`. Call it first thing in an entry point, before JAX allocates.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

ENV = "DUALFASHION_JAX_MALLOC"
# glibc <malloc.h> parameter numbers
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
OPTIONS = ((M_ARENA_MAX, 1),                # one heap: worker threads' arenas would shrink (madvise) and re-fault
           (M_MMAP_MAX, 0),                 # large buffers from the heap, not a fresh mmap per allocation
           (M_TRIM_THRESHOLD, 2**31 - 1))   # never give the heap's top back to the kernel

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no tunable mallopt)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Applies `OPTIONS` once per process (glibc on Linux, unless opted out); returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    choice = os.environ.get(ENV, "keep").strip().lower()
    if choice not in ("keep", "default"):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 'keep' (the default) or 'default' (glibc's own)")
    libc = None if choice == "default" else _glibc()
    _applied = libc is not None and all(libc.mallopt(k, v) == 1 for k, v in OPTIONS)
    log.debug("host memory: %s", "kept in-process (mallopt)" if _applied else "allocator defaults")
    return _applied
