"""Benchmark 11: initial import over HTTP at 100k files (issue 13).

A generated tree of 100,000 small files (quick: 5,000; all supported), a fresh dataset in
an emulator answering every request after 50 ms, and ONE `reconcile` at concurrency 8 that
uploads them all. Two rows:

1. files/s over the whole run (difysync's wall time, start-up, scan and plan included)
   against concurrency / latency = 160 files/s (goal: >= 0.8x);
2. files/s of the last tenth of the uploads against that of the first tenth (goal:
   >= 0.9x), which is what would show something quadratic in the state DB, the journal,
   the plan or the emulator: each upload getting a little slower as more are done.

The tenths come from the server's side, from the arrival time (`RequestRecord.at`) of
each `create_by_file` request the emulator recorded, because difysync prints no
per-file timing and its own wall time mixes start-up, scanning and planning (done once,
before the first upload) with the uploads; the server sees only the uploads, one
timestamp each, in the order they arrived. The creates are sorted by time and cut into
tenths by count; tenth k spans from the last create of tenth k-1 to the last create of
tenth k (the first tenth from the first create), so the spans tile the upload phase and
every tenth counts its own files only.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    Context,
    Proc,
    Row,
    check_ok,
    difysync,
    make_small_tree,
    start_emulator,
    write_config,
)

LATENCY = 0.05
CONCURRENCY = 8
FLOOR = CONCURRENCY / LATENCY  # 160 files/s
GOAL_SHARE = 0.8               # of FLOOR, over the whole run
TENTH_GOAL = 0.9               # last tenth's files/s against the first tenth's
TENTHS = 10
CREATE = "/document/create_by_file"


@dataclass
class Import:
    """What one import left behind: the subprocess, its summary, the server's log."""

    proc: Proc
    out: dict[str, Any]
    requests: list[Any]  # emulator RequestRecords
    supported: int
    db_mb: float


def _kind(r: Any) -> str:
    """A short name for a request, grouped as import_throughput.py groups them."""
    if "create" in r.path:
        tail = "create"
    elif r.path.endswith("/documents"):
        tail = "list"
    else:
        tail = r.path.rsplit("/", 1)[-1]
    return f"{r.method} {tail}"


def _timeout(n: int) -> float:
    """Generous: four times the floor's duration plus start-up slack, so that a slow
    shared machine still finishes but a hang does not block the suite forever."""
    return 300 + 4 * n / FLOOR


def _state_db_mb(where: Path) -> float:
    """Size of the state DB with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in where.glob("state.db*")) / 2**20


def import_once(ctx: Context, n: int) -> Import:
    """Generate the tree, start the emulator, run the one import; the emulator is
    stopped before returning whatever happens (its request log is copied out first)."""
    where = ctx.sub("import100k")
    root = where / "docs"
    root.mkdir(exist_ok=True)
    t = time.perf_counter()
    counts = make_small_tree(root, n, unsupported=0.0, seed=11)
    ctx.log(f"import100k: generated {n:,} files in {time.perf_counter() - t:.0f} s")
    emu = start_emulator(latency=LATENCY)
    try:
        dataset_id = emu.store.create_dataset(f"bench-import-{n}", "high_quality")
        config = write_config(where, emu, root, dataset_id, concurrency=CONCURRENCY)
        emu.reset_requests()
        proc = difysync(config, timeout=_timeout(n))
        out = check_ok(proc, f"import of {n:,} files")
        requests = emu.requests
    finally:
        emu.stop()
    created = out.get("created", 0)
    if created != counts["supported"]:
        raise RuntimeError(f"created {created}, expected {counts['supported']}")
    ctx.log(f"import100k: imported {created:,} files in {proc.seconds:.0f} s")
    return Import(proc, out, requests, counts["supported"], _state_db_mb(where))


def create_times(requests: list[Any]) -> list[float]:
    """Arrival times of the successful creates, sorted (a retried or failed create is
    left out: it did not add a file)."""
    return sorted(r.at for r in requests
                  if r.method == "POST" and r.path.endswith(CREATE) and 200 <= r.status < 300 and not r.dropped)


def tenth_rates(times: list[float]) -> list[float]:
    """files/s of each tenth (by count) of ``times``; tenth k runs from the last time of
    tenth k-1 (the first time, for k = 0) to its own last time."""
    n = len(times)
    if n < 2 * TENTHS:
        raise RuntimeError(f"only {n} creates recorded: too few to cut into tenths")
    bounds = [round(n * k / TENTHS) for k in range(TENTHS + 1)]  # indices: tenth k = [b_k, b_k+1)
    rates = []
    for k in range(TENTHS):
        lo, hi = bounds[k], bounds[k + 1]
        start = times[0] if k == 0 else times[lo - 1]
        span = times[hi - 1] - start
        files = hi - lo - 1 if k == 0 else hi - lo  # the first tenth's first create starts its span
        rates.append(files / span if span > 0 else float("inf"))
    return rates


def whole_row(imp: Import, times: list[float]) -> Row:
    """files/s over difysync's whole wall time against concurrency / latency."""
    created = imp.out.get("created", 0)
    rate = created / imp.proc.seconds
    row = Row(name=f"import over HTTP, {created:,} files, concurrency {CONCURRENCY}", figure=rate,
              unit="files/s", floor=FLOOR, floor_desc=f"concurrency / {LATENCY * 1000:.0f} ms",
              ratio=rate / FLOOR, goal=f">= {GOAL_SHARE}x floor", met=rate / FLOOR >= GOAL_SHARE)
    span = times[-1] - times[0]
    before = times[0] - min(r.at for r in imp.requests)
    kinds = Counter(_kind(r) for r in imp.requests)
    row.notes.append(f"{imp.proc.seconds:.1f} s wall (start-up included); first to last create "
                     f"{span:.1f} s on the server ({(len(times) - 1) / span:.1f} files/s); "
                     f"first request to first create {before:.1f} s")
    row.notes.append(f"{len(imp.requests):,} requests: "
                     + ", ".join(f"{v:,} {k}" for k, v in sorted(kinds.items())))
    row.notes.append(f"peak RSS {imp.proc.max_rss_kb / 1024:.0f} MB; state DB {imp.db_mb:.1f} MB "
                     f"({imp.db_mb * 2**20 / max(created, 1):.0f} B per file)")
    return row


def tenths_row(imp: Import, times: list[float]) -> Row:
    """The last tenth's files/s against the first tenth's, every tenth in a note."""
    rates = tenth_rates(times)
    first, last = rates[0], rates[-1]
    ratio = last / first
    row = Row(name=f"import over HTTP, {len(times):,} files: last tenth vs first", figure=last,
              unit="files/s", floor=first, floor_desc="first tenth", ratio=ratio,
              goal=f">= {TENTH_GOAL}x first tenth", met=ratio >= TENTH_GOAL)
    row.notes.append("files/s per tenth (server arrival times of create_by_file): "
                     + ", ".join(f"{r:.1f}" for r in rates))
    row.notes.append(f"slowest tenth {min(rates):.1f} (#{rates.index(min(rates)) + 1}), "
                     f"fastest {max(rates):.1f} (#{rates.index(max(rates)) + 1})")
    return row


def run(ctx: Context) -> list[Row]:
    n = 5_000 if ctx.quick else 100_000
    imp = import_once(ctx, n)
    times = create_times(imp.requests)
    if len(times) != imp.supported:
        raise RuntimeError(f"the server recorded {len(times)} successful creates for {imp.supported} files")
    return [whole_row(imp, times), tenths_row(imp, times)]
