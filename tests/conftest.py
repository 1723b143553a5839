"""Shared fixtures: a fresh Dify emulator per test, served over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from difysync.emulator import EmulatorServer


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A started EmulatorServer (current-Dify behaviour, key "test-key"), stopped after."""
    with EmulatorServer() as emu:
        yield emu
