"""Benchmark 8: what a one-section edit costs, with Dify splitting the file (``chunking =
"server"``) and with difysync keeping its segments in step (``"local"``).

A generated handbook of 100 Markdown files of 50 sections is imported, then one section of
one file is edited at a time, each edit followed by ``reconcile --wait``. Per edit: the
segments the server (re-)indexed, the bytes difysync sent, and the wall time from the
edit until the new text is searchable (the emulator indexes a document in a time
proportional to its segments; a segment update is indexed before it answers).
"""

from __future__ import annotations

import random
import statistics
import time

from common import Context, Row, check_ok, difysync, start_emulator, write_config

from difysync.chunking import chunks_of

SECTIONS = 50
PER_SEGMENT = 0.02  # seconds of indexing per segment: a 50-section document takes 1 s
EDITS = 6


def section(i: int, j: int, rng: random.Random, edit: int = 0) -> str:
    words = " ".join(rng.choice(("policy", "server", "backup", "rotation", "access", "review", "team",
                                 "incident", "restore", "weekly")) for _ in range(40))
    mark = f" (edit {edit})" if edit else ""
    return f"## {i}.{j} Topic {j}{mark}\n\n{words}.\n\nSee also section {j + 1} of file {i}.\n"


def handbook(i: int, edits: dict[int, int] | None = None) -> str:
    rng = random.Random(i)
    edits = edits or {}
    parts = [f"# Handbook {i}\n\nHow team {i} works.\n"]
    parts += [section(i, j, rng, edits.get(j, 0)) for j in range(1, SECTIONS)]
    return "\n".join(parts)


def run(ctx: Context) -> list[Row]:
    files = 20 if ctx.quick else 100
    found = {mode: _measure(ctx, mode, files) for mode in ("server", "local")}
    server, local = found["server"], found["local"]
    rows = [
        Row(name="segments re-indexed per one-section edit, local chunking", figure=local["segments"],
            unit="segments", floor=1.0, floor_desc="the one chunk that changed", ratio=local["segments"],
            goal="= 1 (server chunking: one per section)", met=local["segments"] == 1),
        Row(name="segments re-indexed per one-section edit, server chunking", figure=server["segments"],
            unit="segments", floor=1.0, floor_desc="the one chunk that changed", ratio=server["segments"],
            goal="- (the whole document)", met=None),
        Row(name="bytes sent per one-section edit, local chunking", figure=local["bytes"], unit="B",
            floor=local["section"], floor_desc="the section's size", ratio=local["bytes"] / local["section"],
            goal="<= 2x", met=local["bytes"] <= 2 * local["section"]),
        Row(name="bytes sent per one-section edit, server chunking", figure=server["bytes"], unit="B",
            floor=server["section"], floor_desc="the section's size", ratio=server["bytes"] / server["section"],
            goal="-", met=None),
        Row(name="edit searchable after, local chunking", figure=local["seconds"], unit="s",
            floor=server["seconds"], floor_desc="server chunking, same run",
            ratio=local["seconds"] / server["seconds"], goal="< 1x", met=local["seconds"] < server["seconds"]),
    ]
    for mode, found_ in found.items():
        rows[0 if mode == "local" else 1].notes.append(
            f"{mode}: import of {files} files x {SECTIONS} sections {found_['import']:.1f} s; medians of "
            f"{EDITS} edits; requests per edit {found_['requests']}; besides the content, one metadata "
            f"write of {found_['metadata_bytes']:.0f} B (the new difysync_sha256)")
    return rows


def _measure(ctx: Context, mode: str, files: int) -> dict[str, float]:
    where = ctx.sub(f"segments-{mode}")
    root = where / "docs"
    root.mkdir(exist_ok=True)
    for i in range(files):
        (root / f"handbook-{i:03d}.md").write_text(handbook(i), encoding="utf-8")
    emu = start_emulator(indexing_delay=0.1)
    try:
        emu.store.indexing_delay_per_segment = PER_SEGMENT
        dataset_id = emu.store.create_dataset(f"bench-segments-{mode}", "economy")
        config = write_config(where, emu, root, dataset_id, concurrency=4)
        config.write_text(config.read_text() + f'chunking = "{mode}"\n', encoding="utf-8")
        started = time.monotonic()
        check_ok(difysync(config, "--wait"), f"import ({mode} chunking)")
        imported = time.monotonic() - started
        check_ok(difysync(config, "--wait"), "a pass after the import")  # records the segments (local)
        per_edit = [_one_edit(emu, root, config, i, n) for n, i in enumerate(range(0, files, files // EDITS), 1)]
    finally:
        emu.stop()
    ctx.log(f"  segments {mode}: {per_edit}")
    return {"import": imported, **{k: statistics.median(e[k] for e in per_edit) for k in per_edit[0]},
            "requests": statistics.median(e["requests"] for e in per_edit)}


def _one_edit(emu, root, config, i: int, n: int) -> dict[str, float]:
    path = root / f"handbook-{i:03d}.md"
    before_text = path.read_text(encoding="utf-8")
    path.write_text(handbook(i, {25: n}), encoding="utf-8")
    changed = next(c for c in chunks_of(path.name, path.read_text(encoding="utf-8"), 500) if f"(edit {n})" in c)
    indexed = emu.store.segments_indexed
    emu.reset_requests()
    started = time.monotonic()
    check_ok(difysync(config, "--wait"), f"edit of {path.name}")
    seconds = time.monotonic() - started
    sent = [r for r in emu.requests if r.mutating and "/metadata" not in r.path]
    tags = [r for r in emu.requests if r.mutating and "/metadata" in r.path]
    assert before_text != path.read_text(encoding="utf-8")
    return {"segments": emu.store.segments_indexed - indexed, "bytes": sum(r.bytes_in for r in sent),
            "metadata_bytes": sum(r.bytes_in for r in tags), "seconds": seconds,
            "section": len(changed.encode()), "requests": len(emu.requests)}
