"""Shared fixtures: a fresh Dify emulator per test, served over real HTTP on loopback."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from difysync.emulator import EmulatorServer


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A started EmulatorServer (current-Dify behaviour, key "test-key"), stopped after."""
    with EmulatorServer() as emu:
        yield emu


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Captured output that names a file whose name is not UTF-8 (surrogate escapes) is
    made encodable, so that pytest-xdist can send the report from its worker."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, _encodable(text)) for title, text in report.sections]


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# Commands keep validated settings in the user's cache (settingsfile.py): the suite's go to
# a folder of its own, never to the cache of whoever runs it.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="difysync-test-cache-")
