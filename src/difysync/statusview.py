"""What ``difysync status`` shows, beyond the counts the state DB keeps: dataset names
instead of ids, ``--refresh`` (ask Dify how the pending documents are doing, and write
it down), one file described whole (``status PATH``), and the ``--json`` shapes, whose
schema is docs/status-json.md.

It reads the state DB and, only for ``--refresh``, asks Dify through the client's one
indexing poller. It never uploads, renames or deletes anything, and never plans.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from .config import FolderSettings, Settings
from .dify import DifyClient
from .errors import DifySyncError
from .models import IN_FLIGHT_STATUSES, ErrorKind, FileState, SkipCode
from .remote import IndexingPoller
from .state import FileDetail, FolderSummary, InFlight, JournalNote, ProblemFile, StateStore

SCHEMA_VERSION = 1
"""The version of the ``status --json`` shapes (docs/status-json.md); raised when a key
changes meaning or goes away, not when one is added."""


# --- times ------------------------------------------------------------------------------


def iso(t: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC with milliseconds (``2026-12-02T03:04:05.123Z``,
    JavaScript's toISOString): two passes within one second stay in order."""
    if t is None:
        return None
    stamp = datetime.fromtimestamp(t, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def iso_ns(t_ns: int | None) -> str | None:
    return None if t_ns is None else iso(t_ns / 1e9)


def local_time(t: float | None) -> str:
    """What people read: local time to the second, or "never"."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"


def ago(t: float | None, now: float) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``4 days ago``, or ``never``: short enough
    for a column of an 80-column table."""
    if not t:
        return "never"
    seconds = max(0.0, now - t)
    for unit, size, limit in (("s", 1, 60), ("min", 60, 3600), ("h", 3600, 48 * 3600)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds // 86400)} days ago"


# --- one file's state -------------------------------------------------------------------


class FileStatus(str, Enum):
    """Where one file stands, in the words of the status table's columns."""

    SYNCED = "synced"        # its document holds this content and is indexed
    PENDING = "pending"      # queued in Dify (or its status not recorded yet)
    INDEXING = "indexing"    # Dify is parsing, splitting or indexing it
    PAUSED = "paused"        # its indexing was paused in Dify
    ERROR = "error"          # the last request, or Dify's indexing, failed (error, error_kind)
    SKIPPED = "skipped"      # not sent, for a reason (skip_reason, skip_code)
    NOT_SENT = "not_sent"    # recorded, but no document holds it yet

    def __str__(self) -> str:
        return self.value


def file_status(row: FileState) -> FileStatus:
    """The same classification as the counts of ``StateStore.summaries``, for one row."""
    if row.skip_reason is not None:
        return FileStatus.SKIPPED
    in_flight = row.indexing_status in IN_FLIGHT_STATUSES
    if row.last_error is not None and row.error_kind is not ErrorKind.WAITING and not in_flight:
        return FileStatus.ERROR
    if row.document_id is None:
        return FileStatus.NOT_SENT
    if in_flight and row.indexing_status != "waiting":
        return FileStatus.INDEXING
    # (a document whose status was never recorded is pending too: --refresh asks about it)
    return {"completed": FileStatus.SYNCED, "paused": FileStatus.PAUSED,
            "error": FileStatus.ERROR}.get(row.indexing_status or "", FileStatus.PENDING)


@dataclass(frozen=True, slots=True)
class OnDisk:
    """The file as it is on disk now (one ``stat``)."""

    size: int
    mtime_ns: int
    regular: bool


@dataclass(frozen=True, slots=True)
class FileView:
    """Everything ``status PATH`` says about one file."""

    folder: FolderSettings
    rel_path: str
    dataset_name: str | None
    detail: FileDetail
    disk: OnDisk | None  # None: not on disk (any more)
    journal: JournalNote | None
    quarantine_after: int

    @property
    def status(self) -> FileStatus:
        return file_status(self.detail.row)

    @property
    def changed_on_disk(self) -> bool | None:
        """True when the file's size or mtime differ from the recorded ones (the next
        pass looks at it again); None when there is nothing to compare."""
        row = self.detail.row
        if self.disk is None or row.size is None or row.mtime_ns is None:
            return None
        return (self.disk.size, self.disk.mtime_ns) != (row.size, row.mtime_ns)


def describe_path(settings: Settings, store: StateStore, folder: FolderSettings, rel_path: str,
                  names: Mapping[str, str | None]) -> list[FileView]:
    """The views of the file at ``rel_path`` in ``folder``, or of every recorded file below
    it when it is a directory; empty when the state DB has no record of it."""
    paths = [rel_path] if store.file_detail(folder.key, rel_path) else store.paths_under(folder.key, rel_path)
    out = []
    for rel in paths:
        detail = store.file_detail(folder.key, rel)
        if detail is None:
            continue
        out.append(FileView(folder=folder, rel_path=rel, dataset_name=names.get(folder.key), detail=detail,
                            disk=_on_disk(Path(folder.path) / rel), journal=store.last_journal(folder.key, rel),
                            quarantine_after=settings.dify.quarantine_after))
    return out


def _on_disk(path: Path) -> OnDisk | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return OnDisk(st.st_size, st.st_mtime_ns, stat.S_ISREG(st.st_mode))


def unknown_path_message(folder: FolderSettings, rel_path: str) -> str:
    """The one line for a path the state DB has no record of."""
    where = Path(folder.path) / rel_path
    if where.exists():
        return (f"{where}: on disk, but difysync has no record of it: it is new since the last pass "
                f"(the next one sends it), or left out (include/exclude, hidden or temporary files)")
    return f"{where}: no such file, and difysync has no record of it in folder {folder.key}"


def print_files(views: Sequence[FileView], console: Any = None) -> None:
    """``status PATH``: one file described whole; several (a directory) as a table."""
    from rich.console import Console

    from .report import files_table, printable

    console = console or Console(highlight=False)
    if len(views) == 1:
        _print_file(views[0], console)
        return
    rows = [(printable(v.rel_path), v.status.value, printable(v.detail.row.skip_reason or v.detail.row.last_error
                                                              or v.detail.row.indexing_status or ""))
            for v in views]
    console.print(files_table(rows, ("file", "state", "reason or indexing status"), console.width))


def _print_file(view: FileView, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    from .report import printable, wrap_path

    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for label, value, style in _file_lines(view):
        grid.add_row(label, Text(printable(value), style=style))
    console.print(Text(wrap_path(printable(str(Path(view.folder.path) / view.rel_path)), console.width)),
                  style="bold")
    console.print(grid)


def _file_lines(view: FileView) -> list[tuple[str, str, str]]:
    """(label, text, style) of each line of one file's description."""
    row, d = view.detail.row, view.detail
    state = view.status
    style = {FileStatus.ERROR: "red", FileStatus.SKIPPED: "yellow"}.get(state, "")
    dataset = f'"{view.dataset_name}"' if view.dataset_name else d.dataset_id or "(none yet)"
    lines = [("folder", f"{view.folder.key} -> dataset {dataset}", ""),
             ("state", state.value, style)]
    if row.document_id:
        lines.append(("document", f"{row.document_id} {row.document_name or ''}".rstrip(), ""))
        lines.append(("indexing", (row.indexing_status or "not known") + (f" (batch {row.batch})" if row.batch
                                                                          else ""), ""))
    if row.sha256:
        lines.append(("sha256", row.sha256, ""))
    if row.size is not None:
        modified = local_time(row.mtime_ns / 1e9 if row.mtime_ns else None)
        lines.append(("recorded", f"{row.size} bytes, modified {modified}", ""))
    lines.append(("on disk", _disk_line(view), "yellow" if view.disk is None or view.changed_on_disk else ""))
    if row.skip_reason:
        lines.append(("skipped", f"{row.skip_reason} ({row.skip_code or 'no code'})", "yellow"))
    elif row.last_error:
        lines.append(("error", f"{row.last_error} ({row.error_kind or 'no code'})",
                      "" if row.error_kind is ErrorKind.WAITING else "red"))
    if not (row.skip_code and row.skip_code.about_the_file):  # (the file's own type or size: no attempt made)
        lines.append(("attempts", _attempts_line(view), "red" if row.skip_code is SkipCode.QUARANTINED else ""))
    if row.refused_sha256:
        lines.append(("refused", ("Dify refused this content: it is sent again when it changes, or after "
                                  "`difysync retry`"), "yellow"))
    if row.chunking:
        segments = f", {d.segments} segment(s) recorded" if d.segments else ""
        lines.append(("chunking", f"{row.chunking}{segments}", ""))
    lines.append(("updated", f"{local_time(d.updated_at)}; last upload {local_time(d.synced_at)}", ""))
    lines.append(("journal", _journal_line(view.journal), "yellow" if view.journal else ""))
    return lines


def _disk_line(view: FileView) -> str:
    if view.disk is None:
        if view.detail.row.document_id and view.folder.delete:
            return "not on disk: the next pass deletes its document"
        return "not on disk"
    if not view.disk.regular:
        return "not a regular file"
    if view.changed_on_disk:
        return (f"changed since it was recorded ({view.disk.size} bytes, modified "
                f"{local_time(view.disk.mtime_ns / 1e9)}): the next pass looks at it again")
    return "as recorded"


def _attempts_line(view: FileView) -> str:
    row = view.detail.row
    if row.skip_code is SkipCode.QUARANTINED:
        return (f"quarantined after {row.attempts or view.quarantine_after} failed attempts: tried again "
                f"when it changes, or after `difysync retry`")
    return f"{row.attempts} failed attempt(s) for this content; quarantined at {view.quarantine_after}"


def _journal_line(note: JournalNote | None) -> str:
    if note is None:
        return "nothing unsettled"
    return (f"{note.op} begun {local_time(note.started_at)}, not settled (the next pass resolves it "
            f"against Dify's listing)")


# --- dataset names ----------------------------------------------------------------------


def folder_rows(settings: Settings, summaries: Sequence[FolderSummary]) -> list[FolderSummary]:
    """The state DB's folders, and the configured folders it has never seen (as rows of
    zeros and "never"): a folder that was never synced is news, not nothing."""
    seen = {s.folder for s in summaries}
    missing = [FolderSummary(folder=f.key, dataset_id=f.dataset_id or None, synced=0, pending=0, indexing=0,
                             error=0, skipped=0, last_full_reconcile=None, last_full_listing=None, journal=0)
               for f in settings.folders if f.key not in seen]
    return sorted([*summaries, *missing], key=lambda s: s.folder)


def dataset_names(settings: Settings, summaries: Iterable[FolderSummary],
                  remembered: Mapping[str, str]) -> dict[str, str | None]:
    """folder -> its dataset's name: the configured ``dataset_name``, else the name the
    state DB remembers for the dataset's id (learnt by a pass that resolved it by name,
    or by ``status --refresh``), else None."""
    configured = {f.key: f for f in settings.folders}
    out: dict[str, str | None] = {}
    for s in summaries:
        folder = configured.get(s.folder)
        if folder is not None and folder.dataset_name:
            out[s.folder] = folder.dataset_name
        else:
            dataset_id = s.dataset_id or (folder.dataset_id if folder is not None else None)
            out[s.folder] = remembered.get(dataset_id) if dataset_id else None
    return out


def ids_to_name(settings: Settings, summaries: Iterable[FolderSummary]) -> set[str]:
    """The dataset ids whose names ``--refresh`` asks Dify for: those of folders that are
    not configured by name (a name found by a pass can be out of date too, but the
    configured name is the one that folder is known by)."""
    by_name = {f.key for f in settings.folders if f.dataset_name}
    return {s.dataset_id for s in summaries if s.dataset_id and s.folder not in by_name}


# --- --refresh ---------------------------------------------------------------------------


@dataclass
class Refresh:
    """What ``status --refresh`` asked and learnt."""

    asked: int = 0  # documents whose status was asked
    changed: int = 0  # rows whose recorded status moved
    answers: dict[str, int] = field(default_factory=dict)  # indexing status (or "gone") -> documents
    names: int = 0  # dataset names learnt
    error: DifySyncError | None = None  # why it stopped (what was learnt before is kept)

    def describe(self) -> str:
        if self.error is not None:
            return f"refresh from Dify failed: {self.error.describe()}"
        if not self.asked:
            said = "refreshed from Dify: no document was pending"
        else:
            tally = ", ".join(f"{n} {status}" for status, n in sorted(self.answers.items()))
            said = f"refreshed from Dify: {self.asked} pending document(s) now {tally} ({self.changed} changed)"
        return said + (f"; {self.names} dataset name(s) learnt" if self.names else "")

    def as_json(self) -> dict[str, Any]:
        return {"asked": self.asked, "changed": self.changed, "answers": dict(sorted(self.answers.items())),
                "names": self.names, "ok": self.error is None,
                "error": self.error.describe() if self.error is not None else None}


def refresh(client: DifyClient, store: StateStore, scope: Sequence[tuple[str, str | None]] | None,
            name_ids: Iterable[str]) -> Refresh:
    """Ask Dify about the pending documents (of ``scope``'s (folder, path or None) pairs;
    all of them without) and write the answers into the state DB, then the names of
    ``name_ids``. Costs what remote.IndexingPoller costs per dataset (one request per
    upload batch up to four, else four status-filtered listings), plus one dataset
    listing page per 100 datasets when names are asked."""
    out = Refresh()
    pending = (store.pending_documents() if scope is None else
               [p for folder, rel in scope for p in store.pending_documents(folder, rel)])
    groups: dict[tuple[str, str], list[InFlight]] = {}
    for p in pending:
        groups.setdefault((p.item.folder, p.dataset_id), []).append(p.item)
    poller = IndexingPoller(client)
    try:
        for (folder, dataset_id), items in groups.items():
            found = poller.statuses(dataset_id, items)
            out.asked += len(items)
            for status, _ in found.values():
                out.answers[status] = out.answers.get(status, 0) + 1
            out.changed += store.record_refreshed(folder, {d: s for d, s in found.items() if s[0] != "gone"},
                                                  {i.document_id: i.batch for i in items})
        out.names = _learn_names(client, store, set(name_ids))
    except DifySyncError as exc:
        out.error = exc
    return out


def _learn_names(client: DifyClient, store: StateStore, wanted: set[str]) -> int:
    """Page through the datasets the key sees until every wanted id is found."""
    learnt: dict[str, str] = {}
    if wanted:
        for dataset in client.list_datasets():
            if str(dataset.get("id")) in wanted and dataset.get("name"):
                learnt[str(dataset["id"])] = str(dataset["name"])
                if learnt.keys() >= wanted:
                    break
    store.remember_dataset_names(learnt)
    return len(learnt)


# --- --json --------------------------------------------------------------------------------

_TIMES = ("last_full_reconcile", "last_full_listing", "last_attempt")


def status_json(settings: Settings, summaries: Sequence[FolderSummary], problems: Sequence[ProblemFile],
                in_flight: Sequence[InFlight], holders: Mapping[str, tuple[Any, Any]],
                names: Mapping[str, str | None], refreshed: Refresh | None) -> dict[str, Any]:
    """The object ``status --json`` prints (docs/status-json.md)."""
    return {
        "schema_version": SCHEMA_VERSION, "generated_at": iso(time.time()),
        "owner": settings.owner, "metadata": settings.metadata.enabled,
        "refresh": refreshed.as_json() if refreshed is not None else None,
        "folders": [folder_json(s, names.get(s.folder), *holders.get(s.folder, (None, None))) for s in summaries],
        "problems": [{"folder": p.folder, "rel_path": p.rel_path, "kind": p.kind, "reason": p.reason,
                      "code": p.code} for p in problems],
        "in_flight": [{"folder": i.folder, "path": i.rel_path, "document_id": i.document_id} for i in in_flight],
    }


def folder_json(s: FolderSummary, name: str | None, service: Any, writing: Any) -> dict[str, Any]:
    return {"folder": s.folder, "dataset_id": s.dataset_id, "dataset_name": name,
            "synced": s.synced, "pending": s.pending, "indexing": s.indexing, "error": s.error,
            "skipped": s.skipped, "journal": s.journal,
            **{key: iso(getattr(s, key)) for key in _TIMES},
            "last_attempt_ok": s.last_attempt_ok, "last_attempt_error": s.last_attempt_error,
            "service": holder_json(service), "writing": holder_json(writing)}


def holder_json(holder: Any) -> dict[str, Any] | None:
    """A lease.Holder: who holds a folder."""
    return None if holder is None else {"what": holder.what, "pid": holder.pid or None,
                                        "host": holder.host or None, "since": iso(holder.since or None)}


def files_json(views: Sequence[FileView], refreshed: Refresh | None) -> dict[str, Any]:
    """The object ``status PATH --json`` prints (docs/status-json.md)."""
    return {"schema_version": SCHEMA_VERSION, "generated_at": iso(time.time()),
            "refresh": refreshed.as_json() if refreshed is not None else None,
            "files": [file_json(v) for v in views]}


def file_json(view: FileView) -> dict[str, Any]:
    d, row = view.detail, view.detail.row
    error = row.last_error if row.skip_reason is None else None
    return {
        "folder": view.folder.key, "path": view.rel_path, "absolute_path": str(Path(view.folder.path) / view.rel_path),
        "dataset_id": d.dataset_id, "dataset_name": view.dataset_name, "state": view.status.value,
        "sha256": row.sha256, "size": row.size, "mtime": iso_ns(row.mtime_ns),
        "on_disk": None if view.disk is None else {
            "size": view.disk.size, "mtime": iso_ns(view.disk.mtime_ns), "regular_file": view.disk.regular,
            "changed": view.changed_on_disk},
        "document_id": row.document_id, "document_name": row.document_name, "batch": row.batch,
        "indexing_status": row.indexing_status,
        "skip_reason": row.skip_reason, "skip_code": row.skip_code.value if row.skip_code else None,
        "error": error, "error_kind": row.error_kind.value if row.error_kind and error else None,
        "refused": row.refused_sha256 is not None, "attempts": row.attempts,
        "quarantine_after": view.quarantine_after, "chunking": row.chunking, "segments": d.segments,
        "updated_at": iso(d.updated_at), "synced_at": iso(d.synced_at),
        "journal": None if view.journal is None else {
            "op": view.journal.op, "started_at": iso(view.journal.started_at),
            "document_id": view.journal.document_id, "document_name": view.journal.document_name},
    }


__all__ = ["SCHEMA_VERSION", "FileStatus", "FileView", "Refresh", "ago", "dataset_names", "describe_path",
           "file_json", "file_status", "files_json", "folder_json", "folder_rows", "holder_json", "ids_to_name",
           "iso", "local_time", "print_files", "refresh", "status_json", "unknown_path_message"]
