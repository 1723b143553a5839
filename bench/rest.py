"""Benchmark 10: the service at rest (issue 13). `difysync run` watches the 100k-file tree
(its synced state built as for the no-op rows), nothing changes, for a window of 10
minutes (1 with --quick): its average CPU, its RSS at the start and the end of the window,
and its inotify watches against the tree's directories."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import API_KEY, Context, Row, synced_tree

CPU_GOAL = 1.0  # percent of one core
WINDOW_S = 600


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _inotify_watches(pid: int) -> int:
    watches = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            watches += sum(1 for line in fd.read_text().splitlines() if line.startswith("inotify wd:"))
        except OSError:
            continue  # closed meanwhile
    return watches


def _directories(root: Path) -> int:
    return 1 + sum(len(dirs) for _, dirs, _ in os.walk(root))


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DIFYSYNC_API_KEY": API_KEY}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "difysync", "run", "-c", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=out)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> float:
    started = time.monotonic()
    while "ready: first full pass" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() - started > timeout:
            raise RuntimeError(f"the service did not get ready: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return time.monotonic() - started


def run(ctx: Context) -> list[Row]:
    n = 10_000 if ctx.quick else 100_000
    window = 60 if ctx.quick else WINDOW_S
    tree = synced_tree(ctx, n)
    log = ctx.sub("rest") / "service.log"
    proc = _start(tree.config, log)
    try:
        ready = _wait_ready(proc, log)
        time.sleep(10)  # the first pass's last writes, the watcher's set-up
        cpu0, rss0, t0 = _cpu_seconds(proc.pid), _rss_mb(proc.pid), time.monotonic()
        samples = []
        while time.monotonic() - t0 < window:
            time.sleep(min(10, window / 6))
            samples.append(_rss_mb(proc.pid))
        cpu = (_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        watches, dirs = _inotify_watches(proc.pid), _directories(tree.root)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    samples = samples or [rss0]
    third = max(1, len(samples) // 3)
    # Flat: the last third of the window holds no more than the first third (a start-up
    # transient in the first samples is not growth; a leak shows in every later sample).
    early, late = sum(samples[:third]) / third, sum(samples[-third:]) / third
    rss1 = samples[-1]
    cpu_row = Row(name=f"service at rest, {n:,} files, {window // 60} min", figure=cpu, unit="% of a core",
                  goal=f"<= {CPU_GOAL}%", met=cpu <= CPU_GOAL)
    cpu_row.notes.append(f"ready after {ready:.0f} s (first full pass); RSS {rss0:.0f} MB at the start of the "
                         f"window, {rss1:.0f} MB at its end (min {min(samples):.0f}, max "
                         f"{max(samples):.0f})")
    rss_row = Row(name=f"service at rest, RSS growth over {window // 60} min", figure=late - early, unit="MB",
                  floor=0.0, floor_desc="flat", goal="no growth (<= 1 MB, last third vs first third)",
                  met=late - early <= 1.0)
    rss_row.notes.append(f"{len(samples)} samples: first third {early:.1f} MB, last third {late:.1f} MB")
    watch_row = Row(name=f"service at rest, inotify watches, {n:,} files", figure=watches, unit="watches",
                    floor=dirs, floor_desc="directories in the tree", ratio=watches / dirs if dirs else None,
                    goal="one per directory", met=watches == dirs)
    return [cpu_row, rss_row, watch_row]
