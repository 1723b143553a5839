"""Benchmark 1: a no-op reconcile (nothing changed) vs `find -printf` over the same tree."""

from __future__ import annotations

import math
import sys

from common import API_KEY, Context, Row, check_ok, difysync, fmt_s, median_of, run_proc, startup_seconds, synced_tree

GOAL_RATIO = 2.5
GOAL_AT = 100_000


def find_seconds(root) -> float:
    return run_proc(["find", str(root), "-type", "f", "-printf", "%s %T@\n"], stdout_devnull=True).seconds


LIST_SCRIPT = """
import sys, time, httpx
base, key, ds = sys.argv[1:4]
t = time.perf_counter()
with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
    page, n = 1, 0
    while True:
        body = c.get(f"{base}/datasets/{ds}/documents", params={"page": page, "limit": 100}).json()
        n += len(body["data"])
        if not body["has_more"]:
            break
        page += 1
print(f"{time.perf_counter() - t:.3f} {page} {n}")
"""


def listing_seconds(tree) -> tuple[float, int]:
    """Time a bare httpx loop paging the whole dataset (inside a subprocess, start-up
    excluded): the part of a full-listing pass that is round trips and server time."""
    proc = run_proc([sys.executable, "-c", LIST_SCRIPT, tree.emu.base_url, API_KEY, tree.dataset_id])
    secs, pages, _n = proc.stdout.split()
    return float(secs), int(pages)


WALK_SCRIPT = """
import os, sys
stack = [sys.argv[1]]
while stack:
    with os.scandir(stack.pop()) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
"""


def python_floor_seconds(root) -> float:
    """What any Python tool pays before deciding anything: start-up with difysync's imports
    (pydantic-settings, httpx, sqlite-utils, click) and an os.scandir walk that stats
    every entry, nothing else."""
    imports = run_proc([sys.executable, "-c", "import difysync.cli, difysync.reconcile"]).seconds
    walk = run_proc([sys.executable, "-c", WALK_SCRIPT, str(root)]).seconds
    bare = run_proc([sys.executable, "-c", "pass"]).seconds
    return imports + walk - bare


def run(ctx: Context) -> list[Row]:
    sizes = [10_000] if ctx.quick else [10_000, 100_000]
    bare, ver = startup_seconds()
    ctx.notes.append(f"start-up: `python -c pass` {fmt_s(bare)}, `python -m difysync --version` {fmt_s(ver)} "
                     "(both included in every difysync figure)")
    rows = []
    for n in sizes:
        tree = synced_tree(ctx, n)
        if tree.build_how.startswith("HTTP"):
            ctx.notes.append(f"import of the {n:,}-file tree over HTTP ({tree.documents:,} documents): "
                             f"{fmt_s(tree.build_seconds)} ({tree.build_how})")
        else:
            ctx.notes.append(f"synced state of the {n:,}-file tree: {tree.build_how}")
        emu = tree.emu
        expected = math.ceil(tree.documents / 100)
        floor, fruns = median_of(lambda: find_seconds(tree.root), runs=3, warmup=1)
        py_floor, _ = median_of(lambda: python_floor_seconds(tree.root), runs=3, warmup=1)
        for full in (False, True):
            emu.reset_requests()
            rss: list[int] = []
            seen: list[str] = []  # per run: how the remote side was checked, with how many requests

            def once() -> float:
                before = len(emu.requests)
                proc = difysync(tree.config, *(["--full-listing"] if full else []))
                out = check_ok(proc, f"no-op reconcile of {n} files")
                if out.get("created") or out.get("updated") or out.get("deleted"):
                    raise RuntimeError(f"no-op reconcile changed things: {out}")
                how = ",".join(sorted(set(out.get("remote_checks", {}).values())))
                seen.append(f"{how} ({len(emu.requests) - before} requests)")
                rss.append(proc.max_rss_kb)
                return proc.seconds

            # The warm-up after the build is the full pass that leaves the mark.
            fig, runs = median_of(once, runs=3, warmup=1)
            mutating = len(emu.mutating_requests())
            ratio = fig / floor if floor else None
            at_goal = n == GOAL_AT and not full
            how = "with --full-listing" if full else "default"
            row = Row(name=f"no-op reconcile, {n:,} files, {how}", figure=fig, unit="s", floor=floor,
                      floor_desc="find -printf", ratio=ratio,
                      goal=(f"<= {GOAL_RATIO}x find" + ("" if n == GOAL_AT else f" (goal is at {GOAL_AT:,})"))
                      if not full else "reported (every 6 h by default)",
                      met=(ratio is not None and ratio <= GOAL_RATIO and mutating == 0) if at_goal else None)
            row.notes.append(f"runs {', '.join(f'{x:.2f}' for x in runs)} s; find {', '.join(f'{x:.3f}' for x in fruns)} s")
            row.notes.append(f"remote side checked by: warm-up {seen[0]}, then {'; '.join(seen[1:])} "
                             f"(a full listing is ceil({tree.documents}/100) = {expected} requests)")
            row.notes.append(f"{mutating} mutating requests over 4 runs" + (" (OK)" if mutating == 0 else " (EXPECTED 0)"))
            row.notes.append(f"Python floor (start-up with difysync's imports + a bare os.scandir/stat walk, "
                             f"median of 3): {py_floor:.2f} s = {py_floor / floor:.2f}x find; difysync is "
                             f"{fig / py_floor:.2f}x that floor")
            if full:
                lst = sorted(listing_seconds(tree)[0] for _ in range(3))[1]
                row.notes.append(f"bare httpx loop paging the same {expected} pages: {lst:.2f} s (median of 3; "
                                 f"server time + round trips)")
            row.notes.append(f"peak RSS {max(rss) / 1024:.0f} MB; difysync minus start-up {fig - ver:.2f} s")
            rows.append(row)
    return rows
