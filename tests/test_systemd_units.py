"""The systemd units in systemd/: they load cleanly and stay hardened.

Runs ``systemd-analyze verify`` and ``systemd-analyze security --offline=true`` on both
units; skipped when systemd-analyze is not installed. Neither needs systemd as PID 1 nor
a running manager. ``verify`` insists that ExecStart's program exists, so it is run on a
copy of each unit whose ExecStart points at /bin/true (everything else unchanged), and any
warning it prints (an unknown or misspelt key is only a warning) fails the test.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ["difysync.service", "difysync@.service"]
EXEC_START = "ExecStart=/usr/local/bin/difysync run -c "
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, env=env, timeout=30)


def _settings(unit: str) -> dict[str, list[str]]:
    """Key -> values as written in the [Service] section (comments ignored)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS_DIR / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}{key}", []).append(value)
    return values


@pytest.fixture
def stand_in(tmp_path: Path):
    """A copy of a unit whose ExecStart runs /bin/true, so that verify can resolve it."""
    def make(unit: str) -> Path:
        text = (UNITS_DIR / unit).read_text()
        assert text.count(EXEC_START) == 1, f"{unit}: expected one line starting {EXEC_START!r}"
        copy = tmp_path / unit
        copy.write_text(text.replace(EXEC_START, "ExecStart=/bin/true run -c "))
        return copy
    return make


@pytest.mark.parametrize("unit", UNITS)
def test_verify_is_clean(unit: str, stand_in) -> None:
    result = _run("verify", str(stand_in(unit)))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", output


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_ok(unit: str) -> None:
    result = _run("security", "--offline=true", str(UNITS_DIR / unit))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_key_settings(unit: str) -> None:
    s = _settings(unit)
    service = lambda key: s.get(f"[Service]{key}", [])  # noqa: E731
    assert service("Type") == ["notify"]
    assert service("NotifyAccess") == ["main"]
    assert service("WatchdogSec") and service("WatchdogSec")[-1] not in ("", "0", "infinity")
    prevent = " ".join(service("RestartPreventExitStatus")).split()
    assert "78" in prevent and "77" in prevent
    assert service("Restart") == ["on-failure"]
    assert any(v.startswith("dify-api-key:/etc/difysync/") for v in service("LoadCredential"))
    assert service("StateDirectory") and service("StateDirectory")[-1].startswith("difysync")
    assert service("StateDirectoryMode") == ["0700"]
    assert service("ExecReload") == ["kill -HUP $MAINPID"]
    # TimeoutStopSec must leave room for shutdown_timeout_seconds (default 20).
    assert int(service("TimeoutStopSec")[-1]) > 20
    assert int(service("TimeoutStartSec")[-1]) >= 300
    # A network client that reads files: never cut it off from the network or the folders.
    families = " ".join(service("RestrictAddressFamilies")).split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families) and not any(f.startswith("~") for f in families)
    assert service("PrivateNetwork") in ([], ["no"])
    assert service("ProtectHome") in (["read-only"], ["tmpfs"])
    assert not service("InaccessiblePaths")
