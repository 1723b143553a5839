"""allocator.py: the service caps glibc's malloc arenas (its peak memory in an event
storm is what it buys; bench/storm.py), unless the operator set MALLOC_ARENA_MAX."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

ASK = "from difysync.allocator import cap_malloc_arenas; print(cap_malloc_arenas())"
glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt only")


def capped(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    return subprocess.run([sys.executable, "-c", ASK], env={**base, **env}, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


@glibc
def test_on_glibc_the_service_caps_the_arenas():
    assert capped() == "True"


def test_an_operators_malloc_arena_max_wins():
    assert capped(MALLOC_ARENA_MAX="4") == "False"
