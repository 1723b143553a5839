"""Benchmark 4: requests per file on a first import with --wait (status polls included),
the requests of the no-op passes after it (the first lists, the next one probes), and what
difysync's metadata costs: requests per file on the import, per edited file, and none on
a no-op pass."""

from __future__ import annotations

import math
from pathlib import Path

from common import Context, Row, check_ok, difysync, make_small_tree, start_emulator, write_config

GOAL_PER_FILE = 1.5
INDEXING_DELAY = 0.5


def run(ctx: Context) -> list[Row]:
    n = 200 if ctx.quick else 2000
    where = ctx.sub("economy")
    root = where / "docs"
    root.mkdir(exist_ok=True)
    counts = make_small_tree(root, n, seed=4)
    emu = start_emulator(indexing_delay=INDEXING_DELAY)
    try:
        dataset_id = emu.store.create_dataset("bench-economy", "high_quality")
        config = write_config(where, emu, root, dataset_id, concurrency=4)
        emu.reset_requests()
        proc = difysync(config, "--wait")
        out = check_ok(proc, "import with --wait")
        files = out.get("created", 0)
        first = emu.requests
        emu.reset_requests()
        out2 = check_ok(difysync(config), "no-op pass")
        noop = emu.requests  # a full listing: the first clean pass, which leaves the mark
        emu.reset_requests()
        out3 = check_ok(difysync(config), "quiet no-op pass")
        quiet = emu.requests
        edited = _edit_some(root, EDITS)
        emu.reset_requests()
        out4 = check_ok(difysync(config), "pass after edits")
        after_edits = emu.requests
    finally:
        emu.stop()
    docs = files
    per_file = len(first) / files if files else float("inf")
    kinds: dict[str, int] = {}
    for r in first:
        k = f"{r.method} {'create' if 'create' in r.path else 'list' if r.path.endswith('/documents') else 'other:' + r.path.rsplit('/', 1)[-1]}"
        kinds[k] = kinds.get(k, 0) + 1
    r1 = Row(name=f"API economy: first import of {files:,} files (--wait)", figure=per_file, unit="req/file",
             floor=1.0, floor_desc="1 create per file", ratio=per_file, goal=f"<= {GOAL_PER_FILE} req/file",
             met=per_file <= GOAL_PER_FILE)
    r1.notes.append(f"{len(first)} requests: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
                    + f"; indexing_delay {INDEXING_DELAY} s; {counts['unsupported']} unsupported files skipped;"
                    f" indexing {out.get('indexing')}")
    expected = math.ceil(docs / 100)
    lists = [r for r in noop if r.method == "GET" and r.path.endswith("/documents")]
    others = [r for r in noop if r not in lists]
    r2 = Row(name=f"API economy: no-op pass over {docs:,} documents", figure=len(noop), unit="requests",
             floor=expected, floor_desc="ceil(docs/100) list calls", ratio=len(noop) / expected if expected else None,
             goal="exactly ceil(docs/100) list calls, nothing else",
             met=len(lists) == expected and not others)
    r2.notes.append(f"{len(lists)} list calls, {len(others)} other requests"
                    + (": " + ", ".join(f"{r.method} {r.path}" for r in others[:5]) if others else "")
                    + f"; pass output unchanged={out2.get('unchanged')}, remote check {sorted((out2.get('remote_checks') or {}).values())}")
    q_lists = [r for r in quiet if r.method == "GET" and r.path.endswith("/documents")]
    r3 = Row(name=f"API economy: next no-op pass over {docs:,} documents (quiet)", figure=len(quiet),
             unit="requests", floor=expected, floor_desc="ceil(docs/100) list calls",
             ratio=len(quiet) / expected if expected else None,
             goal="<= ceil(docs/100) list calls, nothing else",
             met=len(q_lists) == len(quiet) and len(quiet) <= expected)
    r3.notes.append(f"{len(q_lists)} list calls ({sum('status=' in r.query for r in q_lists)} of them "
                    f"filtered by status); remote check {sorted((out3.get('remote_checks') or {}).values())}")
    return [r1, r2, r3, *_metadata_rows(first, files, after_edits, edited, out4)]


EDITS = 20


def _edit_some(root: Path, n: int) -> int:
    """Append a line to the first ``n`` supported files (sorted by path); returns how many."""
    picked = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix[1:] in ("md", "txt", "csv", "html"))[:n]
    for p in picked:
        with p.open("a") as f:
            f.write("\nedited\n")
    return len(picked)


def _metadata_rows(first: list, files: int, after_edits: list, edited: int, out: dict) -> list[Row]:
    meta_import = [r for r in first if "/metadata" in r.path]
    per_file = len(meta_import) / files if files else float("inf")
    r1 = Row(name=f"metadata requests, first import of {files:,} files", figure=per_file, unit="req/file",
             floor=1.0, floor_desc="one per changed file", ratio=per_file, goal="<= 1 per changed file, batched",
             met=per_file <= 1.0)
    r1.notes.append(", ".join(f"{v} {k}" for k, v in sorted(_kinds(meta_import).items())))
    meta_edit = [r for r in after_edits if "/metadata" in r.path]
    per_edit = len(meta_edit) / edited if edited else float("inf")
    r2 = Row(name=f"metadata requests, a pass after {edited} edits", figure=per_edit, unit="req/file",
             floor=1.0, floor_desc="one per changed file", ratio=per_edit, goal="<= 1 per changed file, batched",
             met=per_edit <= 1.0 and out.get("updated") == edited)
    r2.notes.append(", ".join(f"{v} {k}" for k, v in sorted(_kinds(meta_edit).items()))
                    + f"; pass output updated={out.get('updated')}")
    return [r1, r2]


def _kinds(requests: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in requests:
        k = f"{r.method} {r.path.split('/datasets/', 1)[-1].split('/', 1)[-1]}"
        out[k] = out.get(k, 0) + 1
    return out
