"""Chaos: SIGKILL difysync K times in the middle of importing a tree of N files that keeps
changing (edits, moves, deletions, additions between kills), then one clean run, then
check that the dataset mirrors the tree exactly.

    python bench/chaos.py [--files 1000] [--kills 20] [--variant reconcile|run|both]
                          [--seed S] [--indexing-delay 1.0] [--legacy] [--keep]

Prints one row per variant: kills (and how many landed mid-import), files, duplicates,
missing, extra, mismatched, journal rows left, seconds; then every divergence. Exit 1 if
any divergence. The seed is printed; rerun with --seed to reproduce (kill timing still
depends on the machine). Work directories (tree, state DB, one log per difysync run,
mutations.jsonl, result.json) are kept with --keep or when something diverged.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos_harness import ChaosConfig, ChaosResult, run_chaos  # noqa: E402

COLUMNS = ("variant", "kills", "mid-import", "files", "duplicates", "missing", "extra", "unknown",
           "mismatched", "journal rows", "final runs", "seconds")


def row(r: ChaosResult) -> list[str]:
    name = r.variant + (" (legacy)" if r.legacy else "")
    return [name, str(r.kills), str(r.effective_kills), str(r.files), str(r.duplicates), str(r.missing),
            str(r.extra), str(r.unknown), str(r.mismatched), str(r.journal_rows), str(r.final_runs),
            f"{r.seconds:.1f}"]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--variant", choices=("reconcile", "run", "both"), default="both")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--indexing-delay", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.02, help="emulator latency per request (s)")
    parser.add_argument("--legacy", action="store_true", help="against an old (0.x) Dify emulator")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--work-dir", default=None, help="parent of the work directories (default: a temp dir)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"chaos: seed {seed} (reproduce: python bench/chaos.py --files {args.files} --kills {args.kills} "
          f"--variant {args.variant} --seed {seed}{' --legacy' if args.legacy else ''})", flush=True)
    variants = ("reconcile", "run") if args.variant == "both" else (args.variant,)
    parent = Path(args.work_dir or tempfile.mkdtemp(prefix="difysync-chaos-"))
    results = []
    for variant in variants:
        cfg = ChaosConfig(files=args.files, kills=args.kills, variant=variant, seed=seed,
                          indexing_delay=args.indexing_delay, latency=args.latency, legacy=args.legacy,
                          verbose=not args.quiet)
        result = run_chaos(cfg, parent / variant)
        results.append(result)
        print(result.report(), flush=True)
    print()
    print(table([row(r) for r in results]))
    diverged = [r for r in results if r.divergences]
    for r in diverged:
        print(f"\n{r.variant}: {len(r.divergences)} divergence(s), seed {r.seed}, work dir {r.work_dir}")
        for d in r.divergences:
            print(f"  - {d}")
    if diverged or args.keep:
        print(f"\nwork directories kept under {parent}")
    else:
        shutil.rmtree(parent, ignore_errors=True)
    return 1 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
