"""What a run did, in the shapes people and programs read: the folder and run reports,
their counts, the ``--json`` objects, and the status table.

It only describes; it decides nothing and sends nothing. The CLI and the demo both print
through it (so neither imports the other).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .outcomes import Outcome, Result
from .errors import DifySyncError
from .models import ScanProblem
from .plan import Kind, Plan
from .state import FolderSummary, ProblemFile

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
    fatal: DifySyncError | None = None
    remote_check: RemoteCheck = RemoteCheck.NONE
    dataset_name: str | None = None  # as configured; None for a folder given by dataset_id
    seconds: float = 0.0  # the pass
    waited: float = 0.0   # --wait, until this folder's documents settled (or the wait gave up)

    @property
    def held_back(self) -> int:
        """Deletes a mass-delete guard refused in this pass."""
        return self.plan.held_back if self.plan else 0

    @property
    def elapsed(self) -> float:
        return self.seconds + self.waited

    @property
    def counts(self) -> dict[str, int]:
        unchanged = self.plan.unchanged if self.plan else 0
        if self.outcomes or not self.plan:
            return count_outcomes(self.outcomes, unchanged)
        return planned_counts(self.plan)

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
        elif o.result not in (Result.GONE, Result.DEFERRED):
            counts[o.result.value] += 1
    return counts


def planned_counts(plan: Plan) -> dict[str, int]:
    """The counts a plan would give if every action succeeded (a dry run's summary)."""
    counts = count_outcomes([], plan.unchanged)
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


def actions_json(report: RunReport) -> list[dict[str, Any]]:
    """Every action but the bookkeeping ones: outcomes once applied, the plan otherwise."""
    out = []
    for f in report.folders:
        if f.outcomes:
            out.extend({"folder": f.folder, **o.as_dict()} for o in f.outcomes if o.action.kind is not Kind.FORGET)
        elif f.plan:
            out.extend({"folder": f.folder, "action": str(a.kind), "path": a.rel_path,
                        "old_path": a.old_rel_path, "document_id": a.document_id, "result": "planned",
                        "message": a.segments or a.reason, "reason_code": a.code.value if a.code else None}
                       for a in f.plan.actions if a.kind is not Kind.FORGET)
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
        title = f"[bold]{label}[/bold] → dataset {escape(f.dataset_name or f.dataset_id or '-')} · {f.elapsed:.1f} s"
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


def print_status(summaries: Sequence[FolderSummary], problems: Sequence[ProblemFile],
                 services: Mapping[str, Any] | None = None, owner: str | None = None) -> None:
    """The `status` command's tables (rich), with the files in error or skipped below.
    ``services``: folder -> the lease.Holder of the service that holds it, if any;
    ``owner``: this difysync's name in its documents' metadata (None: metadata off)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    # A full pass may be quiet (a probe, not a listing): say when each dataset was last
    # listed whole, below the table, where it does not crowd an 80-column terminal.
    notes = [f"{s.folder}: whole dataset last listed {_when(s.last_full_listing)}" for s in summaries]
    notes += [f"[red]{escape(s.folder)}: last attempt {_when(s.last_attempt)} failed: "
              f"{escape(str(printable(s.last_attempt_error or 'see the files below')))}[/red]"
              for s in summaries if s.last_attempt_ok is False]
    notes += [f"{folder}: served by {holder.describe()}" for folder, holder in (services or {}).items()
              if holder is not None]
    if owner is not None:
        notes.append(f"owner: {owner}")
    table = Table(title="difysync status", caption="\n".join(notes) or None, caption_justify="left")
    for col in ("folder", "dataset", "synced", "pending", "indexing", "error", "skipped", "last full pass"):
        table.add_column(col, overflow="fold", justify="right" if col in (
            "synced", "pending", "indexing", "error", "skipped") else "left")
    for s in summaries:
        table.add_row(s.folder, s.dataset_id or "-", str(s.synced), str(s.pending), str(s.indexing),
                      str(s.error), str(s.skipped), _when(s.last_full_reconcile))
    console.print(table)
    if problems:
        ptable = Table(title="files in error or skipped")
        for col in ("folder", "file", "state", "reason"):
            ptable.add_column(col, overflow="fold")
        for p in problems:
            ptable.add_row(p.folder, printable(p.rel_path), p.kind, printable(p.reason))
        console.print(ptable)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"


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
           "planned_counts", "print_status", "printable", "run_json", "summary_line", "summary_tables"]
