"""Benchmark 2: cold scan+hash throughput (`reconcile --dry-run` on a never-synced tree)
vs `sha256sum` over the same files."""

from __future__ import annotations

import os

from common import (Context, Row, check_ok, difysync, drop_caches, make_big_tree, run_proc,
                    start_emulator, tree_bytes, write_config)

GOAL_RATIO = 0.9
MB = 1 << 20


def run(ctx: Context) -> list[Row]:
    total = (200 if ctx.quick else 2048) * MB
    where = ctx.sub("hashing")
    root = where / "big"
    paths = make_big_tree(root, total)
    nbytes = tree_bytes(paths)
    emu = start_emulator()
    try:
        dataset_id = emu.store.create_dataset("bench-hash", "high_quality")
        # Files go up to 15 MB; lift the size cap so that every file is hashed.
        config = write_config(where, emu, root, dataset_id, extra_dify="max_file_size_mb = 32")
        dropped_all = True
        results: dict[str, list[float]] = {"difysync": [], "sha256sum": []}

        def measure_difysync() -> float:
            state = where / "state.db"
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    os.unlink(str(state) + suffix)
                except FileNotFoundError:
                    pass
            proc = difysync(config, "--dry-run")
            out = check_ok(proc, "dry-run hashing")
            if out.get("created") != len(paths):
                raise RuntimeError(f"dry run planned {out.get('created')} creates, expected {len(paths)}")
            return proc.seconds

        def measure_sha() -> float:
            proc = run_proc(["sha256sum", *map(str, paths)], stdout_devnull=True)
            if proc.rc != 0:
                raise RuntimeError(f"sha256sum failed: {proc.stderr[-500:]}")
            return proc.seconds

        # Two rounds, alternating the order, a cache drop before each measurement.
        order = [("difysync", measure_difysync), ("sha256sum", measure_sha),
                 ("sha256sum", measure_sha), ("difysync", measure_difysync)]
        for name, fn in order:
            dropped_all = drop_caches() and dropped_all
            results[name].append(fn())
    finally:
        emu.stop()
    best = {k: min(v) for k, v in results.items()}
    mbps = nbytes / MB / best["difysync"]
    floor = nbytes / MB / best["sha256sum"]
    row = Row(name=f"cold hashing, {nbytes / MB:,.0f} MB in {len(paths)} files", figure=mbps, unit="MB/s",
              floor=floor, floor_desc="sha256sum", ratio=mbps / floor, goal=f">= {GOAL_RATIO}x sha256sum",
              met=mbps / floor >= GOAL_RATIO)
    row.notes.append(("page cache dropped before each measurement" if dropped_all else
                      "CACHE NOT DROPPED (not permitted): warm-cache figures") +
                     "; order difysync, sha256sum, sha256sum, difysync; best of 2 each")
    row.notes.append("difysync: " + ", ".join(f"{x:.2f}" for x in results["difysync"]) + " s; sha256sum: "
                     + ", ".join(f"{x:.2f}" for x in results["sha256sum"]) + " s (difysync includes start-up)")
    return [row]
