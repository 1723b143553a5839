"""What a run did, in the shapes people and programs read: the folder and run reports,
their counts, the ``--json`` objects, and the status table.

It only describes; it decides nothing and sends nothing. The CLI and the demo both print
through it (so neither imports the other).
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .outcomes import Outcome, Result
from .errors import DifySyncError
from .models import ScanProblem
from .plan import Kind, Plan
from .state import FolderSummary, ProblemFile

if TYPE_CHECKING:  # pragma: no cover
    from .marks import SkipRow

COUNT_KEYS = ("created", "updated", "renamed", "deleted", "unchanged", "skipped", "failed", "waiting", "tagged",
              "stopped")


class RemoteCheck(str, Enum):
    """How a pass saw the remote side."""

    NONE = ""             # not at all (the pass stopped first, or a dry run without a dataset)
    LISTING = "listing"   # every document
    PROBE = "probe"       # a few requests proved nothing changed since the last clean pass
    NAMES = "names"       # lookups by name (a targeted pass)

    def __str__(self) -> str:
        return self.value


@dataclass
class FolderReport:
    folder: str
    dataset_id: str | None
    plan: Plan | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    hashed: int = 0
    adopted: int = 0  # adoptions decided while listing, recorded (plan.Adoptions): no outcome each
    # A quiet pass (marks.py): the skips of the last clean pass, reported again as they were.
    repeated: tuple[SkipRow, ...] = ()
    fatal: DifySyncError | None = None
    remote_check: RemoteCheck = RemoteCheck.NONE
    dataset_name: str | None = None  # as configured; None for a folder given by dataset_id
    seconds: float = 0.0  # the pass
    waited: float = 0.0   # --wait, until this folder's documents settled (or the wait gave up)
    # counts, with what they were counted from: a report is read many times once the pass
    # is over (ok, the summary, --json, the run record), and a quiet pass may repeat thousands of skips
    _counted: tuple[tuple[Any, ...], dict[str, int]] | None = field(default=None, repr=False, compare=False)

    @property
    def held_back(self) -> int:
        """Deletes a mass-delete guard refused in this pass."""
        return self.plan.held_back if self.plan else 0

    @property
    def elapsed(self) -> float:
        return self.seconds + self.waited

    @property
    def counts(self) -> dict[str, int]:
        basis = (self.outcomes, len(self.outcomes), self.adopted, self.plan, self.repeated)
        counted = self._counted
        if counted is None or not (counted[0][0] is basis[0] and counted[0][1:3] == basis[1:3]
                                   and counted[0][3] is basis[3] and counted[0][4] is basis[4]):
            unchanged = self.plan.unchanged if self.plan else 0
            if self.outcomes or self.adopted or not self.plan:
                counts = count_outcomes(self.outcomes, unchanged + self.adopted)
            else:
                counts = planned_counts(self.plan)
            counts["skipped"] += len(self.repeated)
            self._counted = (basis, counts)
        return dict(self._counted[1])

    @property
    def ok(self) -> bool:
        counts = self.counts
        return not self.errors and self.fatal is None and counts["failed"] == 0 and counts["stopped"] == 0

    def uploaded(self) -> set[str]:
        """Ids of the documents this pass uploaded (what ``--wait`` waits for)."""
        return {o.document_id for o in self.outcomes if o.result is Result.OK and o.document_id
                and o.action.kind in (Kind.CREATE, Kind.UPDATE, Kind.RENAME, Kind.RECREATE)}


@dataclass
class RunReport:
    folders: list[FolderReport]
    dry_run: bool = False
    seconds: float = 0.0
    interrupted: bool = False  # stopped by a signal (Ctrl-C) before it was done

    @property
    def counts(self) -> dict[str, int]:
        total = count_outcomes([])
        for f in self.folders:
            for k, v in f.counts.items():
                total[k] = total.get(k, 0) + v
        return total

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.folders)

    @property
    def fatal(self) -> DifySyncError | None:
        return next((f.fatal for f in self.folders if f.fatal is not None), None)

    @property
    def hashed(self) -> int:
        return sum(f.hashed for f in self.folders)

    def touched_documents(self) -> dict[tuple[str, str], set[str]]:
        """(folder key, dataset id) -> ids of documents this pass uploaded (for --wait)."""
        return {(f.folder, f.dataset_id): f.uploaded() for f in self.folders if f.dataset_id and f.uploaded()}


def count_outcomes(outcomes: Iterable[Outcome], unchanged: int = 0) -> dict[str, int]:
    """The counts `--json` and the summary line report."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["unchanged"] = unchanged
    for o in outcomes:
        if o.result is Result.OK:
            name = _DONE_COUNTS.get(o.action.kind)
            if name:
                counts[name] += 1
        elif o.result not in (Result.GONE, Result.DEFERRED, Result.BACK):
            counts[o.result.value] += 1
    return counts


def planned_counts(plan: Plan) -> dict[str, int]:
    """The counts a plan would give if every action succeeded (a dry run's summary)."""
    counts = count_outcomes([], plan.unchanged + len(plan.adopted))
    for a in plan.actions:
        name = _PLANNED_COUNTS.get(a.kind)
        if name:
            counts[name] += 1
    return counts


_DONE_COUNTS = {Kind.CREATE: "created", Kind.RECREATE: "created", Kind.UPDATE: "updated",
                Kind.RENAME: "renamed", Kind.DELETE: "deleted", Kind.ADOPT: "unchanged", Kind.TAG: "tagged"}
_PLANNED_COUNTS = {**_DONE_COUNTS, Kind.SKIP: "skipped", Kind.WAIT: "waiting"}


# --- --json ----------------------------------------------------------------------------


def run_json(report: RunReport, waited: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one object `reconcile --json` prints (README "Commands" documents the keys)."""
    counts = report.counts
    out: dict[str, Any] = {k: counts.get(k, 0) for k in COUNT_KEYS}
    out["hashed"] = report.hashed
    out["dry_run"] = report.dry_run
    out["interrupted"] = report.interrupted
    out["errors"] = run_errors(report)
    out["remote_checks"] = {f.folder: f.remote_check.value for f in report.folders}
    out["actions"] = actions_json(report)
    if waited is not None:
        out["indexing"] = waited
    return out


def run_errors(report: RunReport) -> list[str]:
    return [f"{f.folder}: {e}" for f in report.folders for e in f.errors]


_BOOKKEEPING = frozenset({Kind.FORGET, Kind.ADOPT})  # decisions that send nothing and change nothing in Dify


def actions_json(report: RunReport) -> list[dict[str, Any]]:
    """Every action but the bookkeeping ones (forgetting a row, adopting a document the
    server already holds, counted as unchanged): outcomes once applied, the plan otherwise.
    A first pass over a synced million-file tree adopts every file; listing each here made
    its output a gigabyte in memory."""
    out = []
    for f in report.folders:
        out.extend({"folder": f.folder, "action": "skip", "path": r.rel_path, "old_path": None,
                    "document_id": r.document_id, "result": "skipped", "message": r.reason,
                    "reason_code": r.code} for r in f.repeated)
        if f.outcomes:
            out.extend({"folder": f.folder, **o.as_dict()} for o in f.outcomes if o.action.kind not in _BOOKKEEPING)
        elif f.plan:
            out.extend({"folder": f.folder, "action": str(a.kind), "path": a.rel_path,
                        "old_path": a.old_rel_path, "document_id": a.document_id, "result": "planned",
                        "message": a.segments or a.reason, "reason_code": a.code.value if a.code else None}
                       for a in f.plan.actions if a.kind not in _BOOKKEEPING)
    return out


def summary_line(report: RunReport) -> str:
    """``3 created, 0 failed, 12 unchanged in 1.2 s`` (``plan (dry run): ...`` for a dry run)."""
    counts = report.counts
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("created", "failed"))
    if report.interrupted:
        summary += " (interrupted: what was not attempted is sent by the next pass)"
    prefix = "plan (dry run): " if report.dry_run else ""
    return f"{prefix}{summary} in {report.seconds:.1f} s"


# --- the summary table -----------------------------------------------------------------

SUMMARY_COLUMNS = ("created", "updated", "renamed", "deleted", "unchanged", "skipped", "failed")


def summary_tables(report: RunReport, labels: Mapping[str, str] | None = None) -> Any:
    """The end of a pass on a terminal: a small table per folder, titled with the folder
    (its label), its dataset's name (the id when it was configured by id) and its time,
    the --wait included; its counts and the deletes a guard held back below. A folder
    that did not end well is red, so the tables say what the exit code says; the summary
    line printed below them gives the reason. Fits 80 columns."""
    from rich import box
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for f in report.folders:
        style = None if f.ok else "red"
        label = escape(str(printable((labels or {}).get(f.folder, f.folder))))
        dataset = escape(f.dataset_name or f.dataset_id or "-")
        # A folder labelled by its dataset's name (no `name` of its own) is not named twice.
        title = f"[bold]{label}[/bold]" + ("" if dataset == label else f" → dataset {dataset}") + f" · {f.elapsed:.1f} s"
        if report.dry_run:
            title += " (dry run: what would be done)"
        table = Table(title=title, title_justify="left", title_style=style, box=box.SIMPLE_HEAD,
                      show_edge=False, collapse_padding=True,
                      caption="held back: deletes a mass-delete guard refused (see the error above)"
                      if f.held_back else None, caption_justify="left")
        for name in (*SUMMARY_COLUMNS, "held back"):
            table.add_column(name, justify="right")
        counts = f.counts
        table.add_row(*(str(counts[name]) for name in SUMMARY_COLUMNS), str(f.held_back), style=style)
        tables.append(table)
    return Group(*tables)


# --- the status table ------------------------------------------------------------------

_COUNTS = ("synced", "pending", "indexing", "error", "skipped")
_COUNT_STYLES = {"error": "red", "skipped": "yellow"}  # on a terminal, a count above 0 of these
_GAP = 2  # the table's space between two columns


def print_status(summaries: Sequence[FolderSummary], problems: Sequence[ProblemFile],
                 services: Mapping[str, Any] | None = None, owner: str | None = None, *,
                 names: Mapping[str, str | None] | None = None, notes: Sequence[str] = (),
                 console: Any = None, now: float | None = None) -> None:
    """The `status` command's table (rich): one row per folder with its dataset's name,
    the notes below it, then the files in error or skipped, per folder. It fits the
    console's width (80 columns included): paths break at their slashes, names at
    spaces, and the counts and times never break. Errors are red and warnings yellow
    on a terminal; without one there is no colour.
    ``services``: folder -> the lease.Holder of the service that holds it, if any;
    ``owner``: this difysync's name in its documents' metadata (None: metadata off);
    ``names``: folder -> dataset name (None or absent: not known; without ``names`` the
    ids are shown and nothing is said about learning names); ``notes``: lines (markup)
    to say first."""
    from rich.console import Console

    console = console or Console(highlight=False)
    now = time.time() if now is None else now
    hint = names is not None  # (the caller looked the names up: say how to learn the missing ones)
    names = names or {}
    console.print(_folder_table(summaries, names, console.width, now))
    for note in list(notes) + _status_notes(summaries, services, owner, names if hint else None):
        console.print(note, highlight=False)
    by_folder: dict[str, list[ProblemFile]] = {}
    for p in problems:
        by_folder.setdefault(p.folder, []).append(p)
    for folder, rows in by_folder.items():
        name = names.get(folder)
        console.print()
        console.print(_escape(f"files in error or skipped in {folder}" + (f" ({name})" if name else "") + ":"),
                      highlight=False)
        console.print(files_table([(printable(p.rel_path), p.kind, printable(p.reason)) for p in rows],
                                  ("file", "state", "reason"), console.width))


def _folder_table(summaries: Sequence[FolderSummary], names: Mapping[str, str | None], width: int,
                  now: float) -> Any:
    from rich.text import Text

    from .statusview import ago

    cells = [[str(getattr(s, key)) for key in _COUNTS] + [ago(s.last_full_reconcile, now)] for s in summaries]
    headers = [*_COUNTS, "last ok pass"]
    fixed = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    first = max(12, width - sum(fixed) - _GAP * len(fixed))
    table = _table(title="difysync status")
    table.add_column("folder / dataset", overflow="fold", width=first)
    for header, size in zip(headers, fixed):
        table.add_column(header, justify="right" if header in _COUNTS else "left", no_wrap=True, min_width=size)
    for s, row in zip(summaries, cells):
        label = Text(wrap_path(printable(s.folder), first))
        name = textwrap.wrap(_dataset_label(s, names.get(s.folder)), first - 2, break_on_hyphens=False)
        label.append("".join("\n  " + line for line in name), style="cyan")
        counts = [Text(v, style=_COUNT_STYLES.get(k, "") if v != "0" else "") for k, v in zip(_COUNTS, row)]
        last = Text(row[-1], style="yellow" if s.last_full_reconcile is None else "")
        table.add_row(label, *counts, last)
    return table


def _dataset_label(s: FolderSummary, name: str | None) -> str:
    if name:
        return name
    if s.dataset_id:
        return f"(id {s.dataset_id[:8]}…)"
    return "(no dataset yet)"


def _status_notes(summaries: Sequence[FolderSummary], services: Mapping[str, Any] | None, owner: str | None,
                  names: Mapping[str, str | None] | None) -> list[str]:
    """The lines below the table (rich markup): per folder, when its last successful full
    pass ran and when the whole dataset was last listed (a quiet pass probes instead),
    a failed last attempt (red), requests not settled (yellow), who serves it."""
    from .statusview import local_time

    notes = [_escape(f"{s.folder}: last ok pass {local_time(s.last_full_reconcile)}, "
                     f"whole dataset last listed {local_time(s.last_full_listing)}") for s in summaries]
    notes += [f"[red]{_escape(s.folder)}: last attempt {local_time(s.last_attempt)} failed: "
              f"{_escape(str(printable(s.last_attempt_error or 'see the files below')))}[/red]"
              for s in summaries if s.last_attempt_ok is False]
    notes += [f"[yellow]{_escape(s.folder)}: {s.journal} request(s) sent and not settled "
              f"(the next pass resolves them)[/yellow]" for s in summaries if s.journal]
    notes += [_escape(f"{folder}: served by {holder.describe()}") for folder, holder in (services or {}).items()
              if holder is not None]
    if names is not None and any(s.dataset_id and not names.get(s.folder) for s in summaries):
        notes.append("dataset names not known yet: `difysync status --refresh` asks Dify for them")
    if owner is not None:
        notes.append(_escape(f"owner: {owner}"))
    return notes


def files_table(rows: Sequence[tuple[str, str, str]], headers: tuple[str, str, str], width: int) -> Any:
    """A table of files: (path, state, text), the path broken at its slashes; rows in
    error red, skipped ones yellow (on a terminal)."""
    from rich.text import Text

    state_width = max([len(headers[1])] + [len(r[1]) for r in rows])
    longest = max([len(headers[0])] + [len(r[0]) for r in rows])
    path_width = min(longest, max(16, (width * 45) // 100))
    table = _table()
    table.add_column(headers[0], overflow="fold", width=path_width)
    table.add_column(headers[1], no_wrap=True, min_width=state_width)
    table.add_column(headers[2], overflow="fold")
    for path, state, text in rows:
        style = {"error": "red", "skipped": "yellow"}.get(state, "")
        table.add_row(Text(wrap_path(path, path_width)), state, Text(text), style=style)
    return table


def _table(**kw: Any) -> Any:
    """The look of every status table: a rule under the header, no frame, two spaces
    between columns (the most room for the columns in 80)."""
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, **kw)


def wrap_path(path: str, width: int) -> str:
    """``path`` in lines of at most ``width`` cells, broken after a slash where it can be
    (a single name longer than a line is cut)."""
    from rich.cells import cell_len

    lines: list[str] = []
    line = ""
    for part in re.findall(r"[^/]*/|[^/]+$", path) or [path]:
        while cell_len(part) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(part[:width])
            part = part[width:]
        if line and cell_len(line) + cell_len(part) > width:
            lines.append(line)
            line = part
        else:
            line += part
    if line:
        lines.append(line)
    return "\n".join(lines)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def printable(value: Any) -> Any:
    """Strings (recursively) safe to print as UTF-8: a file name that is not UTF-8 keeps
    its odd bytes as ``\\xNN`` instead of breaking the JSON or the terminal."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


__all__ = ["COUNT_KEYS", "FolderReport", "RemoteCheck", "RunReport", "actions_json", "count_outcomes",
           "files_table", "planned_counts", "print_status", "printable", "run_json", "summary_line",
           "summary_tables", "wrap_path"]
