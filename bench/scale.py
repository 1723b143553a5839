"""Benchmark 9: how the costs grow with the tree, 10k -> 100k -> 1M files (issue 13).

For each size: a generated tree, its documents preloaded into an emulator (tagged as
difysync would have left them), then
- the adopting first pass (no state DB: every file hashed, every document listed and
  adopted),
- the quiet no-op pass (median of 3 after the pass that leaves the mark), against
  `find -printf` on the same tree,
- a no-op pass with --full-listing (one run),
with each pass's peak RSS and the state DB's size. A row per cost and size; the per-file
cost at the biggest size is judged against the one at the size before it (goal: within
1.5x, i.e. linear growth).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from common import (Context, Row, check_ok, difysync, median_of, make_small_tree, preload_documents, run_proc,
                    start_emulator, write_config)

GROWTH_GOAL = 1.5        # per-file cost at the biggest size / at the size before, at most
NOOP_RATIO_GOAL = 2.5    # quiet no-op against find, at every size
RSS_GOAL_MB = 1024       # peak RSS at 1M files (stretch goal 600 MB)


@dataclass
class Costs:
    files: int
    documents: int
    adopt_s: float
    adopt_rss_mb: float
    quiet_s: float
    quiet_rss_mb: float
    full_s: float
    full_rss_mb: float
    find_s: float
    db_mb: float


def _sizes(ctx: Context) -> list[int]:
    if ctx.quick:
        return [2_000, 20_000]
    biggest = int(os.environ.get("DIFYSYNC_BENCH_SCALE_MAX", "1000000"))
    return [n for n in (10_000, 100_000, 1_000_000) if n <= biggest]


def measure(ctx: Context, n: int) -> Costs:
    where = ctx.sub(f"scale-{n}")
    root = where / "docs"
    root.mkdir(exist_ok=True)
    t = time.perf_counter()
    make_small_tree(root, n, seed=13)
    ctx.log(f"scale: generated {n:,} files in {time.perf_counter() - t:.0f} s")
    emu = start_emulator()
    try:
        dataset_id = emu.store.create_dataset(f"scale-{n}", "high_quality")
        config = write_config(where, emu, root, dataset_id, concurrency=8)
        t = time.perf_counter()
        documents = preload_documents(emu, dataset_id, root)
        ctx.log(f"scale: preloaded {documents:,} documents in {time.perf_counter() - t:.0f} s")
        adopt = difysync(config)
        out = check_ok(adopt, f"adopting pass over {n} files")
        if out.get("created") or out.get("updated") or out.get("deleted"):
            raise RuntimeError(f"the adopting pass changed documents: {out}")
        ctx.log(f"scale: adopting pass {adopt.seconds:.0f} s")
        quiet_rss: list[int] = []

        def quiet() -> float:
            proc = difysync(config)
            check_ok(proc, f"no-op pass over {n} files")
            quiet_rss.append(proc.max_rss_kb)
            return proc.seconds

        quiet_s, _ = median_of(quiet, runs=3, warmup=1)  # the warm-up lists and leaves the mark
        full = difysync(config, "--full-listing")
        check_ok(full, f"--full-listing pass over {n} files")
        find_s, _ = median_of(lambda: run_proc(["find", str(root), "-type", "f", "-printf", "%s %T@\n"],
                                               stdout_devnull=True).seconds, runs=3, warmup=1)
        db = where / "state.db"
        db_mb = sum(p.stat().st_size for p in where.glob("state.db*")) / 2**20 if db.exists() else 0.0
        # quiet_rss[0] is the warm-up, the full pass that leaves the mark: not a quiet pass.
        return Costs(n, documents, adopt.seconds, adopt.max_rss_kb / 1024, quiet_s, max(quiet_rss[1:]) / 1024,
                     full.seconds, full.max_rss_kb / 1024, find_s, db_mb)
    finally:
        emu.stop()
        shutil.rmtree(root, ignore_errors=True)  # a million files: gone before the next size


def rows_for(costs: list[Costs]) -> list[Row]:
    rows: list[Row] = []
    for c in costs:
        ratio = c.quiet_s / c.find_s if c.find_s else None
        quiet = Row(name=f"scale: quiet no-op, {c.files:,} files", figure=c.quiet_s, unit="s", floor=c.find_s,
                    floor_desc="find -printf", ratio=ratio, goal=f"<= {NOOP_RATIO_GOAL}x find",
                    met=ratio is not None and ratio <= NOOP_RATIO_GOAL)
        quiet.notes.append(f"peak RSS {c.quiet_rss_mb:.0f} MB; state DB {c.db_mb:.1f} MB "
                           f"({c.db_mb * 2**20 / c.files:.0f} B per file); {c.documents:,} documents")
        rows.append(quiet)
        for name, seconds, rss in (("adopting first pass", c.adopt_s, c.adopt_rss_mb),
                                   ("no-op with --full-listing", c.full_s, c.full_rss_mb)):
            row = Row(name=f"scale: {name}, {c.files:,} files", figure=seconds * 1e6 / c.files, unit="us/file",
                      goal="reported (growth judged below)")
            row.notes.append(f"{seconds:.1f} s in all; peak RSS {rss:.0f} MB")
            rows.append(row)
        rss_row = Row(name=f"scale: peak RSS, {c.files:,} files",
                      figure=max(c.adopt_rss_mb, c.quiet_rss_mb, c.full_rss_mb), unit="MB",
                      goal=f"<= {RSS_GOAL_MB} MB at 1,000,000" if c.files == 1_000_000 else "reported",
                      met=max(c.adopt_rss_mb, c.quiet_rss_mb, c.full_rss_mb) <= RSS_GOAL_MB
                      if c.files == 1_000_000 else None)
        rss_row.notes.append(f"adopting {c.adopt_rss_mb:.0f} MB, quiet {c.quiet_rss_mb:.0f} MB, "
                             f"full listing {c.full_rss_mb:.0f} MB")
        rows.append(rss_row)
    rows.extend(growth_rows(costs))
    return rows


def growth_rows(costs: list[Costs]) -> list[Row]:
    """Per-file cost at each size against the size before: linear growth is 1.0x."""
    rows = []
    for before, after in zip(costs, costs[1:]):
        for name, get in (("quiet no-op", lambda c: c.quiet_s), ("adopting first pass", lambda c: c.adopt_s),
                          ("--full-listing", lambda c: c.full_s), ("state DB size", lambda c: c.db_mb),
                          ("peak RSS", lambda c: max(c.adopt_rss_mb, c.quiet_rss_mb, c.full_rss_mb))):
            per_before, per_after = get(before) / before.files, get(after) / after.files
            growth = per_after / per_before if per_before else None
            rows.append(Row(name=f"scale: {name} per file, {after.files:,} vs {before.files:,}", figure=growth,
                            unit="x", floor=1.0, floor_desc="linear", ratio=growth,
                            goal=f"<= {GROWTH_GOAL}x" if name not in ("peak RSS",) else "reported",
                            met=(growth is not None and growth <= GROWTH_GOAL) if name != "peak RSS" else None))
    return rows


def run(ctx: Context) -> list[Row]:
    return rows_for([measure(ctx, n) for n in _sizes(ctx)])
