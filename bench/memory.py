"""Benchmark 5: peak RSS of a no-op `difysync reconcile` on the big tree, quiet and with a
full listing."""

from __future__ import annotations

import sys

from common import Context, Row, check_ok, difysync, run_proc, synced_tree

GOAL_MB = 150


def run(ctx: Context) -> list[Row]:
    n = 10_000 if ctx.quick else 100_000
    tree = synced_tree(ctx, n)
    rss_kb: dict[str, list[int]] = {"default": [], "--full-listing": []}
    for _ in range(2):
        for how, args in (("default", ()), ("--full-listing", ("--full-listing",))):
            proc = difysync(tree.config, *args)
            check_ok(proc, f"no-op reconcile of {n} files")
            rss_kb[how].append(proc.max_rss_kb)
    # The goal is judged on the worst pass: the full listing (at least every 6 h).
    peak = max(max(v) for v in rss_kb.values()) / 1024
    base = max(run_proc([sys.executable, "-m", "difysync", "--version"]).max_rss_kb for _ in range(2)) / 1024
    row = Row(name=f"peak RSS, no-op reconcile, {n:,} files", figure=peak, unit="MB", floor=base,
              floor_desc="RSS of `difysync --version`", ratio=peak / base if base else None,
              goal=f"<= {GOAL_MB} MB", met=peak <= GOAL_MB)
    row.notes.append("; ".join(f"{how}: {', '.join(f'{x / 1024:.0f}' for x in v)} MB" for how, v in rss_kb.items())
                     + f"; {(peak - base) * 1024 / n:.2f} KB per file above the import baseline (worst pass)")
    return [row]
