"""Benchmark 3: initial import throughput with 50 ms of latency per request, at
concurrency 1, 4 and 8 (fresh dataset and state each time)."""

from __future__ import annotations

from common import Context, Row, check_ok, difysync, make_small_tree, start_emulator, write_config

LATENCY = 0.05
GOAL_SHARE = 0.8


def run(ctx: Context) -> list[Row]:
    n = 200 if ctx.quick else 2000
    base = ctx.sub("import")
    root = base / "docs"
    root.mkdir(exist_ok=True)
    counts = make_small_tree(root, n, unsupported=0.0, seed=3)
    rows = []
    emu = start_emulator(latency=LATENCY)
    try:
        for conc in (1, 4, 8):
            where = base / f"c{conc}"
            where.mkdir()
            dataset_id = emu.store.create_dataset(f"bench-import-{conc}", "high_quality")
            config = write_config(where, emu, root, dataset_id, concurrency=conc)
            emu.reset_requests()
            proc = difysync(config)
            out = check_ok(proc, f"import at concurrency {conc}")
            created = out.get("created", 0)
            if created != counts["supported"]:
                raise RuntimeError(f"created {created}, expected {counts['supported']}")
            reqs = emu.requests
            rate = created / proc.seconds
            floor = conc / LATENCY
            row = Row(name=f"initial import, {created:,} files, concurrency {conc}", figure=rate,
                      unit="files/s", floor=floor, floor_desc=f"concurrency / {LATENCY * 1000:.0f} ms",
                      ratio=rate / floor, goal=f">= {GOAL_SHARE}x floor", met=rate / floor >= GOAL_SHARE)
            by_kind: dict[str, int] = {}
            for r in reqs:
                key = f"{r.method} {'create' if 'create' in r.path else 'list' if r.path.endswith('/documents') else r.path.rsplit('/', 1)[-1]}"
                by_kind[key] = by_kind.get(key, 0) + 1
            row.notes.append(f"{proc.seconds:.1f} s wall (start-up included); {len(reqs)} requests: "
                             + ", ".join(f"{v} {k}" for k, v in sorted(by_kind.items())))
            rows.append(row)
    finally:
        emu.stop()
    return rows
