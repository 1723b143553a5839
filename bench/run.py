"""Run the difysync benchmark suite: `python bench/run.py [--quick] [--only NAME ...]
[--json FILE] [--markdown FILE] [--keep]`.

Generates its own data in a temp dir (removed at the end, Ctrl-C included), runs each
benchmark, prints one table (figure, floor measured in the same run, ratio, goal, met?)
and the machine line. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Context, Row, machine_line  # noqa: E402

BENCHMARKS = {  # name -> module (order of the table)
    "noop": "noop",
    "hashing": "hashing",
    "import": "import_throughput",
    "economy": "api_economy",
    "memory": "memory",
    "watch": "watch",
    "polling": "polling",
    "segments": "segments",
    "scale": "scale",
    "rest": "rest",
    "import100k": "import_scale",
    "storm": "storm",
}


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, int) or (abs(x) >= 100 and float(x).is_integer()):
        s = f"{int(x):,}"
    elif abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    return f"{s} {unit}".strip()


def cells(r: Row) -> list[str]:
    met = "-" if r.met is None else ("yes" if r.met else "NO")
    floor = "-" if r.floor is None else f"{fmt(r.floor, r.unit)} ({r.floor_desc})"
    ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
    return [r.name, fmt(r.figure, r.unit), floor, ratio, r.goal, met]


HEAD = ["benchmark", "figure", "floor", "ratio", "goal", "met?"]


def markdown(rows: list[Row], machine: str, notes: list[str], header: str) -> str:
    out = [header, "", f"Machine: {machine}", "", "| " + " | ".join(HEAD) + " |",
           "|" + "---|" * len(HEAD)]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |")
    out.append("")
    for r in rows:
        for n in r.notes:
            out.append(f"- {r.name}: {n}")
    for n in notes:
        out.append(f"- {n}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test, ~1 min)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                    help=f"run only these ({', '.join(BENCHMARKS)})")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    ap.add_argument("--tmp", metavar="DIR", help="parent of the scratch dir (default: the system temp dir)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True)

    def log(msg: str) -> None:
        err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}", highlight=False)

    def on_term(signum, frame):  # SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="difysync-bench-", dir=args.tmp))
    ctx = Context(tmp=tmp, quick=args.quick, log=log)
    machine = machine_line(tmp)
    rows: list[Row] = []
    started = time.perf_counter()
    failed = False
    try:
        for name in (args.only or list(BENCHMARKS)):
            log(f"[bold]{name}[/bold] ...")
            t = time.perf_counter()
            try:
                mod = importlib.import_module(BENCHMARKS[name])
                got = mod.run(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
                failed = True
                traceback.print_exc()
                got = [Row(name=name, figure=None, unit="", goal=f"ERROR: {exc}"[:200], met=False)]
            rows.extend(got)
            log(f"{name} done in {time.perf_counter() - t:.1f} s")
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        failed = True
    finally:
        common.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    mode = "quick" if args.quick else "full"
    title = f"difysync benchmarks ({mode}, {time.perf_counter() - started:.0f} s)"
    table = Table(title=title)
    for col in HEAD:
        table.add_column(col, justify="right" if col in ("figure", "ratio") else "left")
    for r in rows:
        c = cells(r)
        c[-1] = {"yes": "[green]yes[/green]", "NO": "[red]NO[/red]"}.get(c[-1], c[-1])
        table.add_row(*c)
    console.print(table)
    console.print(f"Machine: {machine}", highlight=False)
    for r in rows:
        for n in r.notes:
            console.print(f"  {r.name}: {n}", highlight=False)
    for n in ctx.notes:
        console.print(f"  {n}", highlight=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": mode, "machine": machine, "notes": ctx.notes,
                                               "rows": [r.as_dict() for r in rows]}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, machine, ctx.notes, f"# {title}\n\n"
                                                f"Run at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                                                f"with `python bench/run.py{' --quick' if args.quick else ''}`."))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
