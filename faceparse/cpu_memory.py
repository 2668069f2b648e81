"""Keep freed CPU memory for reuse instead of handing it back to the OS after every op.

glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on free, so every large CPU tensor -- a 256 px batch of 2 at 64
channels is 33.5 MiB -- is page-faulted and zeroed by the kernel again on every op. On a
2-core AVX2 EPYC that made an add of two such maps 7x slower (18 ms instead of 2.7), a
depthwise conv 6x, and the VGG19-BN + ViT-B/16 predict pass 1.14-1.25x slower at 256 px
(1.29x at 512 px; BENCHMARKS.md). PyTorch's CUDA side caches its blocks; its CPU side
leaves this to malloc, and Intel's tuning guides preload jemalloc or tcmalloc for it.
This module does the same without a preload: it tells glibc (``mallopt``) to serve large
blocks from its heap and to keep up to :data:`TRIM_THRESHOLD` of freed memory there.

The cost is the caching allocator's: the process holds on to its high-water mark. Switch
it off with ``fast_path.reuse_cpu_memory=false`` (predict, eval, bench) or
``FACEPARSE_CPU_REUSE_MEMORY=0`` (any command); another allocator (``LD_PRELOAD``) or the
user's own ``MALLOC_*_`` settings are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys

from faceparse.hardware import env_switch

log = logging.getLogger(__name__)

__all__ = ["TRIM_THRESHOLD", "reusing_freed_cpu_memory", "reuse_freed_cpu_memory"]

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# freed memory kept at the top of the heap before glibc returns it (mallopt takes an int)
TRIM_THRESHOLD = 2**31 - 1
# the user's own glibc tuning, read by glibc at start-up: left as the user set it
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                 "GLIBC_TUNABLES")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
SWITCH = "FACEPARSE_CPU_REUSE_MEMORY"


def _why_not() -> str | None:
    """Why this process's allocator is not ours to tune, or None when it is."""
    if env_switch(SWITCH) is False:
        return f"{SWITCH}={os.environ[SWITCH]}"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return f"not glibc ({sys.platform}, {platform.libc_ver()[0] or 'unknown libc'})"
    preload = os.environ.get("LD_PRELOAD", "")
    for name in OTHER_ALLOCATORS:
        if name in preload:
            return f"{name} is preloaded (LD_PRELOAD) and caches on its own"
    for name in USER_SETTINGS:
        if name in os.environ:
            return f"{name} is set: the user's own malloc tuning is kept"
    return None


@functools.cache
def reuse_freed_cpu_memory() -> bool:
    """Have glibc keep freed large blocks for reuse; return whether it was switched on.

    Process-wide and done once (later calls return the first answer): logged with its
    reason either way.
    """
    why_not = _why_not()
    if why_not is None:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD,
                                                               TRIM_THRESHOLD) == 1
        why_not = None if ok else "glibc refused mallopt"
    if why_not is not None:
        log.info("CPU memory: left to the allocator as it is (%s)", why_not)
        return False
    log.info("CPU memory: freed blocks are kept for reuse (glibc: no per-tensor mmap, up to "
             "%d MiB kept): large tensors are no longer page-faulted anew on every op; "
             "%s=0 turns this off", TRIM_THRESHOLD >> 20, SWITCH)
    return True


def reusing_freed_cpu_memory() -> bool:
    """Whether this process already switched reuse on (asks; never switches it itself)."""
    return reuse_freed_cpu_memory.cache_info().currsize > 0 and reuse_freed_cpu_memory()
