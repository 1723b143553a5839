"""The service's memory allocator: glibc malloc's per-thread arenas, capped.

glibc gives threads that allocate at once their own malloc arenas (up to eight per
core), and what is freed in one arena is not reused by a thread allocating from
another. The service's threads come and go (a listing's eight pages at a time, eight
uploads, the watcher's), so after one big pass each arena keeps its share of that pass's
high tide: in the 100k-file ``git checkout`` storm (bench/storm.py) the service peaked at
152 MB with glibc's default and at 139 MB with two arenas, resting at 65 MB either way.
Python's own small-object allocator is not involved (it is one per process).

Two is what MALLOC_ARENA_MAX=2 gives, the setting Python services are commonly run with;
an operator's own MALLOC_ARENA_MAX wins. Elsewhere (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import os
import sys

__all__ = ["SERVICE_ARENAS", "cap_malloc_arenas"]

SERVICE_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def cap_malloc_arenas(arenas: int = SERVICE_ARENAS) -> bool:
    """Cap glibc's malloc arenas for the threads started from now on; True when done."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt ignores arenas
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))
