"""Benchmark 10: the service at rest (issue 13). `difysync run` watches the 100k-file tree
(its synced state built as for the no-op rows), nothing changes, for a window of 10
minutes (1 with --quick; DIFYSYNC_BENCH_REST_WINDOW seconds if set): its average CPU, its RSS at the start and the end of the window,
and its inotify watches against the tree's directories. Then the same with watch mode
``poll`` (a scan every 10 s, a 2-minute window): its CPU per poll against a one-shot quiet
pass over the same tree minus start-up."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    API_KEY,
    Context,
    Row,
    SyncedTree,
    check_ok,
    difysync,
    median_of,
    run_proc,
    synced_tree,
)

CPU_GOAL = 1.0  # percent of one core
WINDOW_S = 600
POLL_INTERVAL_S = 10  # watch mode "poll": seconds between scans (the default is 30)
POLL_WINDOW_S = 120


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
    window = 60 if ctx.quick else int(os.environ.get("DIFYSYNC_BENCH_REST_WINDOW", WINDOW_S))
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
    return [cpu_row, rss_row, watch_row, poll_row(ctx, tree)]


def poll_row(ctx: Context, tree: SyncedTree) -> Row:
    """Watch mode ``poll``: the service's CPU per poll over a window with nothing changing,
    against a one-shot quiet pass over the same tree minus start-up (goal: no more)."""
    config = tree.config.parent / "sync-poll.toml"
    config.write_text(tree.config.read_text(encoding="utf-8")
                      + f'\n[watch]\nmode = "poll"\npoll_interval_seconds = {POLL_INTERVAL_S}\n',
                      encoding="utf-8")
    window = 40 if ctx.quick else POLL_WINDOW_S

    quiet_cpu: list[float] = []

    def quiet() -> float:
        proc = difysync(config)
        check_ok(proc, "quiet pass (poll row)")
        quiet_cpu.append(proc.cpu_seconds)
        return proc.seconds

    # The floor is the quiet pass's CPU, not its wall time: a one-shot pass shares its walk
    # with a helper process on a spare CPU (walkshare.py), so its wall time is less than
    # what it costs, while a poll walks on one thread and its cost is all CPU.
    quiet_s, _ = median_of(quiet, runs=3, warmup=1)
    quiet_cpu_s = statistics.median(quiet_cpu[1:])
    version_cpu_s = statistics.median(run_proc([sys.executable, "-m", "difysync", "--version"]).cpu_seconds
                                      for _ in range(5))
    log = ctx.sub("rest") / "service-poll.log"
    proc = _start(config, log)
    try:
        _wait_ready(proc, log)
        time.sleep(POLL_INTERVAL_S + 2)  # the observer's first snapshot
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        cpu_s, elapsed = _cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    per_poll = cpu_s / (elapsed / POLL_INTERVAL_S)
    floor = max(quiet_cpu_s - version_cpu_s, 1e-3)
    row = Row(name=f"service at rest, watch mode poll, CPU per poll, {tree.n_files:,} files",
              figure=per_poll, unit="s", floor=floor, floor_desc="one-shot quiet pass minus start-up, CPU",
              ratio=per_poll / floor, goal="<= 1.0x", met=per_poll <= floor)
    row.notes.append(f"{cpu_s:.1f} CPU s over {elapsed:.0f} s with a poll every {POLL_INTERVAL_S} s; quiet pass "
                     f"{quiet_cpu_s:.2f} CPU s (wall {quiet_s:.2f} s; median of 3, its walk helper included), "
                     f"start-up {version_cpu_s:.2f} CPU s; the service's CPU is all of "
                     f"its threads (the observer's snapshots and anything else it does)")
    return row
