"""Benchmark 6: watch latency of the daemon: from a file edit to the first request the
server sees for it (the update), median and p95 over a series of edits.

The debounce is deliberately part of the path (the daemon waits for a file to be quiet
before sending it), so the floor is the configured debounce and the ratio says how much
the daemon adds on top of it: scheduling, the stat of the path, the name look-up.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time

from common import API_KEY, Context, Row, start_emulator, write_config

DEBOUNCE = 0.5


def run(ctx: Context) -> list[Row]:
    edits = 10 if ctx.quick else 50
    work = ctx.sub("watch")
    root = work / "docs"
    root.mkdir()
    files = [root / f"note-{i}.md" for i in range(5)]
    for i, f in enumerate(files):
        f.write_text(f"initial {i}\n")
    emu = start_emulator()
    try:
        dataset_id = emu.store.create_dataset("watch-bench", "high_quality")
        cfg = write_config(work, emu, root, dataset_id)
        cfg.write_text(cfg.read_text().replace(
            "[[folders]]", f"[watch]\nmode = \"events\"\ndebounce_seconds = {DEBOUNCE}\n"
                           f"delete_delay_seconds = 2\n[schedule]\nstatus_poll_seconds = 60\n[[folders]]"))
        log = open(work / "daemon.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "difysync", "run", "-c", str(cfg)],
                                env={**os.environ, "DIFYSYNC_API_KEY": API_KEY}, stdout=subprocess.DEVNULL,
                                stderr=log, cwd=work)
        try:
            deadline = time.monotonic() + 60
            while len(emu.store.documents(dataset_id)) < len(files):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the daemon did not import the starting files; see daemon.log")
                time.sleep(0.05)
            time.sleep(1.0)
            latencies = []
            for n in range(edits):
                target = files[n % len(files)]
                seen = len(emu.requests)
                t0 = time.time()
                target.write_text(f"edit {n}\n")
                while True:
                    updates = [r for r in emu.requests[seen:] if r.mutating and "update" in r.path]
                    if updates:
                        latencies.append(updates[0].at - t0)
                        break
                    if time.time() - t0 > 30:
                        raise RuntimeError(f"edit {n} was not sent within 30 s")
                    time.sleep(0.005)
                time.sleep(0.3)  # let the update settle before the next edit
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    finally:
        emu.stop()
    latencies.sort()
    median = statistics.median(latencies)
    p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)]
    note = f"{edits} edits; debounce {DEBOUNCE} s (the tracker never sends a path sooner than 0.75 s after its last event, to pair a move's halves); overhead over the debounce: median " \
           f"{median - DEBOUNCE:.3f} s, p95 {p95 - DEBOUNCE:.3f} s"
    return [
        Row(name=f"watch latency, median of {edits} edits", figure=median, unit="s", floor=DEBOUNCE,
            floor_desc="debounce_seconds", ratio=median / DEBOUNCE,
            goal="reported (edit -> first request)", met=None, notes=[note]),
        Row(name=f"watch latency, p95 of {edits} edits", figure=p95, unit="s", floor=DEBOUNCE,
            floor_desc="debounce_seconds", ratio=p95 / DEBOUNCE, goal="reported", met=None),
    ]
