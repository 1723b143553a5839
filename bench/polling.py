"""Benchmark 7: what one indexing poll costs while `reconcile --wait` waits, on datasets
of growing size: the poller asks about what is in flight, so the cost must not follow
the dataset. One new file (polled by its batch) and twelve (polled by status listings)."""

from __future__ import annotations

import math

from common import Context, Row, check_ok, difysync, start_emulator, write_config

INDEXING_DELAY = 4.0  # seconds each upload stays in flight: several polls
GAP = 0.4  # requests further apart than this belong to different polls (pauses are >= 1 s)
GOAL = 4


def run(ctx: Context) -> list[Row]:
    sizes = (350, 2_000) if ctx.quick else (350, 5_000, 50_000)
    rows = []
    for new_files in (1, 12):
        per_size = {n: _measure(ctx, n, new_files) for n in sizes}
        for n, (per_poll, polls, requests) in per_size.items():
            constant = max(p for p, _, _ in per_size.values()) <= min(p for p, _, _ in per_size.values()) + 1e-9
            row = Row(name=f"indexing poll, {new_files} upload{'s' if new_files > 1 else ''} in flight, "
                           f"dataset of {n:,} documents", figure=per_poll, unit="req/poll", floor=1.0,
                      floor_desc="one request", ratio=per_poll, goal=f"<= {GOAL}, the same at every size",
                      met=per_poll <= GOAL and constant)
            row.notes.append(f"{requests} requests in {polls} polls during --wait (indexing {INDEXING_DELAY} s); "
                             f"a poll that lists the dataset would cost {math.ceil((n + new_files) / 100)}")
            rows.append(row)
    return rows


def _measure(ctx: Context, n_docs: int, new_files: int) -> tuple[float, int, int]:
    where = ctx.sub(f"polling-{n_docs}-{new_files}")
    root = where / "docs"
    root.mkdir(exist_ok=True)
    emu = start_emulator(indexing_delay=INDEXING_DELAY)
    try:
        dataset_id = emu.store.create_dataset("bench-polling", "high_quality")
        for i in range(n_docs):
            doc, _ = emu.store.add_document(dataset_id, f"other-{i}.md", b"x", match_by_name=False)
            doc.indexing_started_at -= 3600  # indexed long ago: only the new uploads are in flight
        for i in range(new_files):
            (root / f"new-{i}.md").write_text(f"new file {i}\n")
        config = write_config(where, emu, root, dataset_id, concurrency=4)
        emu.store.indexing_delay = INDEXING_DELAY
        emu.reset_requests()
        out = check_ok(difysync(config, "--wait"), "import with --wait")
        ctx.log(f"  polling {n_docs} docs, {new_files} new: {out.get('indexing')}")
        requests = emu.requests
    finally:
        emu.stop()
    last_upload = max(r.at for r in requests if r.method == "POST")
    polls = [r for r in requests if r.method == "GET" and r.at > last_upload]
    rounds = 1 if polls else 0
    for before, after in zip(polls, polls[1:]):
        if after.at - before.at > GAP:
            rounds += 1
    return (len(polls) / rounds if rounds else float("inf")), rounds, len(polls)
