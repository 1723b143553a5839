"""`difysync diff`: a folder, its state DB rows and its dataset's listing, compared (in the
spirit of `rclone check`), as data: what is only local, only remote (made by us or not),
differing, in error or skipped, and how much is in step.

``compare`` is pure (plain values in, a frozen Comparison out) and pairs files with
documents the way the planner does (the state DB's document id first, then the document
name from naming.py with the folder's ``name_prefix``), so what diff reports is what a
reconcile would see. ``diff_folder`` gathers those values and only reads: it creates no
dataset, writes no state, takes no lease and sends no mutating request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .config import FolderSettings, Settings
from .dify import DifyClient
from .errors import DatasetMissing
from .models import FileState, LocalFile, RemoteDocument, ScanProblem, SkipCode
from .plan import Policy, refusal
from .reconcile import policy_for, with_hashes
from .remote import resolve_dataset, stale_dataset
from .report import printable
from .scanner import scan_tree
from .state import StateBackend


class Difference(str, Enum):
    """What one line of a diff is, in the order the lines are printed."""

    ONLY_LOCAL = "only_local"                  # a file that may be sent, and no document holds it
    ONLY_REMOTE_OURS = "only_remote_ours"      # a document difysync made here, with no file
    ONLY_REMOTE_OTHERS = "only_remote_others"  # a document a person or another host made
    DIFFERING = "differing"                    # the file and its document disagree
    IN_ERROR = "in_error"                      # the file's document failed indexing, or is disabled
    SKIPPED = "skipped"                        # a file difysync does not send (type, size, ...)

    def __str__(self) -> str:
        return self.value

    @property
    def counts_as_difference(self) -> bool:
        """Skipped files are the folder's rules at work, as in a pass: not a difference."""
        return self is not Difference.SKIPPED


class Reason(str, Enum):
    """Why a line is in its category (skipped lines carry a models.SkipCode instead)."""

    NEW = "new"                        # only local: never sent
    DOCUMENT_GONE = "document_gone"    # only local: the state DB's document is no longer in Dify
    NO_DATASET = "no_dataset"          # only local: the folder's dataset does not exist yet
    FILE_GONE = "file_gone"            # only remote, ours: the file was deleted (or is excluded now)
    OTHER_OWNER = "other_owner"        # only remote: difysync_owner names another host
    NO_OWNER = "no_owner"              # only remote: no difysync_owner, not in the state DB
    CONTENT = "content"                # differing: the file's hash is not the one sent
    TAGS = "tags"                      # differing: the content is in step, difysync's metadata is not
    NAME = "name"                      # differing: the document's name is not the file's name now
    MOVED = "moved"                    # differing: the file moved; its document has the old name
    SPLIT = "split"                    # differing: split otherwise than the folder's chunking says
    UNVERIFIED = "unverified"          # differing: no hash is known for the document
    INDEXING_ERROR = "indexing_error"  # in error: Dify's indexing failed
    DISABLED = "disabled"              # in error: disabled in Dify
    ARCHIVED = "archived"              # in error: archived in Dify

    def __str__(self) -> str:
        return self.value


Code = Reason | SkipCode

_TEXTS: dict[Reason, str] = {
    Reason.NEW: "not in Dify yet",
    Reason.DOCUMENT_GONE: "its document was deleted in Dify",
    Reason.NO_DATASET: "the dataset does not exist yet",
    Reason.FILE_GONE: "made by difysync here; its file is gone",
    Reason.OTHER_OWNER: "made by another difysync",
    Reason.NO_OWNER: "not made by difysync (uploaded by hand?)",
    Reason.CONTENT: "the file changed since it was sent",
    Reason.TAGS: "difysync's metadata on the document is missing or out of date",
    Reason.NAME: "the document's name is out of date",
    Reason.MOVED: "moved; the document has the old name",
    Reason.SPLIT: "split otherwise than the folder's chunking says",
    Reason.UNVERIFIED: "no hash known for the document",
    Reason.INDEXING_ERROR: "indexing failed in Dify",
    Reason.DISABLED: "disabled in Dify",
    Reason.ARCHIVED: "archived in Dify",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One difference (or skipped file). ``detail`` is for people and adds to ``code``'s
    meaning (the server's error text, the other owner, the skip's reason)."""

    difference: Difference
    code: Code
    rel_path: str | None                # the local file's path (for a document: its file's, if known)
    document_name: str | None = None
    document_id: str | None = None
    status: str | None = None           # the document's display status in Dify
    owner: str | None = None            # its difysync_owner
    old_rel_path: str | None = None     # MOVED: the path the document was synced from
    detail: str = ""

    def describe(self) -> str:
        text = _TEXTS[self.code] if isinstance(self.code, Reason) else ""
        if self.detail:
            text = f"{text}: {self.detail}" if text else self.detail
        return text


@dataclass(frozen=True, slots=True)
class Sides:
    """Everything compare() looks at, as plain values. ``files`` carry their sha256 where
    the policy lets them be sent (reconcile.with_hashes); ``remote`` is None when the
    folder's dataset does not exist; ``journaled`` are the names of documents an
    interrupted create of ours may have left (the journal's)."""

    files: Sequence[LocalFile]
    rows: Mapping[str, FileState]
    remote: Sequence[RemoteDocument] | None
    problems: Sequence[ScanProblem] = ()
    journaled: frozenset[str] = frozenset()
    root_error: str | None = None


@dataclass(frozen=True)
class Comparison:
    """The result: every difference and skipped file, and how many files are in step
    (``indexing`` of them still being indexed). With ``root_error`` nothing was compared:
    a missing root says nothing about the documents, so none is listed as deletable."""

    entries: tuple[Entry, ...]
    in_step: int = 0
    indexing: int = 0
    root_error: str | None = None
    dataset_missing: bool = False
    remote_documents: int = 0

    def count(self, difference: Difference) -> int:
        return sum(1 for e in self.entries if e.difference is difference)

    @property
    def differences(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.difference.counts_as_difference)

    @property
    def ok(self) -> bool:
        """In step: exit 0."""
        return self.root_error is None and not self.differences

    def counts(self) -> dict[str, int]:
        return {**{d.value: self.count(d) for d in Difference}, "in_step": self.in_step, "indexing": self.indexing}


# --- the comparison (pure) ------------------------------------------------------------------


def compare(sides: Sides, policy: Policy) -> Comparison:
    """Pair each file with its document and say how they differ; then every document no
    file claimed is only remote. ``policy`` is the folder's (reconcile.policy_for): its
    extensions and size limit, owner and name prefix."""
    remote = sides.remote or ()
    if sides.root_error:
        return Comparison((), root_error=sides.root_error, dataset_missing=sides.remote is None,
                          remote_documents=len(remote))
    pairing = _Pairing(sides, policy)
    entries: list[Entry] = [Entry(Difference.SKIPPED, p.code, p.rel_path, detail=p.reason) for p in sides.problems]
    in_step = indexing = 0
    for f in sorted(sides.files):
        doc = pairing.pair(f.rel_path)
        entry = _judge(f, sides.rows.get(f.rel_path), doc, pairing, sides.remote is None)
        if entry is None:
            in_step += 1
            indexing += bool(doc is not None and doc.in_flight)
        else:
            entries.append(entry)
    entries = _moves(entries, pairing.unclaimed_ours_by_sha(), {f.rel_path: f.sha256 for f in sides.files})
    claimed_again = {e.document_id for e in entries if e.code is Reason.MOVED}
    entries += [pairing.only_remote(d) for d in pairing.unclaimed() if d.id not in claimed_again]
    order = list(Difference)
    entries.sort(key=lambda e: (order.index(e.difference), e.rel_path or "", e.document_name or ""))
    return Comparison(tuple(entries), in_step, indexing, dataset_missing=sides.remote is None,
                      remote_documents=len(remote))


class _Pairing:
    """Which document holds which file: the state DB's document id first (its file still
    there), then the document named as the planner names the file; and whose each
    document is."""

    def __init__(self, sides: Sides, policy: Policy) -> None:
        self.sides, self.policy = sides, policy
        self.by_id = {d.id: d for d in sides.remote or ()}
        self.by_name: dict[str, list[RemoteDocument]] = defaultdict(list)
        for d in sorted(sides.remote or (), key=_rank):
            self.by_name[d.name].append(d)
        self.tracked = {row.document_id: row for row in sides.rows.values() if row.document_id}
        local = {f.rel_path for f in sides.files}
        self.claimed: set[str] = {row.document_id for rel, row in sides.rows.items()
                                  if rel in local and row.document_id in self.by_id}
        self.problem_paths = {p.rel_path for p in sides.problems}

    def pair(self, rel: str) -> RemoteDocument | None:
        row = self.sides.rows.get(rel)
        if row is not None and row.document_id in self.by_id:
            return self.by_id[row.document_id]
        candidates = [d for d in self.by_name.get(self.policy.name_of(rel), ()) if d.id not in self.claimed]
        if not candidates:
            return None
        chosen = next((d for d in candidates if self.adoptable(d)), candidates[0])
        self.claimed.add(chosen.id)
        return chosen

    def ours(self, doc: RemoteDocument) -> bool:
        """Made by difysync here: in the state DB, left by our interrupted create, or
        tagged with our owner."""
        owner = self.policy.owner
        return doc.id in self.tracked or doc.name in self.sides.journaled or \
            (owner is not None and doc.owner == owner)

    def adoptable(self, doc: RemoteDocument) -> bool:
        """A pass would take this document over by name (plan.py's rule): ours, or, with
        no metadata to tell (off, or an old server), any."""
        if self.policy.owner is None or doc.tags is None:
            return True
        return self.ours(doc)

    def holder(self, doc: RemoteDocument) -> str | None:
        """Another owner's tag on the document (then a pass leaves it alone)."""
        owner = self.policy.owner
        return doc.owner if owner is not None and doc.owner is not None and doc.owner != owner else None

    def unclaimed(self) -> list[RemoteDocument]:
        return [d for d in self.by_id.values() if d.id not in self.claimed and not self._unknown(d)]

    def _unknown(self, doc: RemoteDocument) -> bool:
        """Its file lies under a directory the scan could not read: not known to be gone."""
        if not self.problem_paths:
            return False
        row = self.tracked.get(doc.id)
        return row is not None and _under_any(row.rel_path, self.problem_paths)

    def unclaimed_ours_by_sha(self) -> dict[str, list[tuple[FileState, RemoteDocument]]]:
        """Documents a pass could give to a moved file: ours, healthy, whose row's
        content hash is known (plan.py pairs renames by it), in path order."""
        out: dict[str, list[tuple[FileState, RemoteDocument]]] = defaultdict(list)
        for doc in sorted(self.unclaimed(), key=lambda d: self.tracked[d.id].rel_path if d.id in self.tracked else ""):
            row = self.tracked.get(doc.id)
            if row is not None and row.sha256 and not doc.failed and doc.enabled and not doc.archived \
                    and self.holder(doc) is None:
                out[row.sha256].append((row, doc))
        return out

    def only_remote(self, doc: RemoteDocument) -> Entry:
        row = self.tracked.get(doc.id)
        path = row.rel_path if row is not None else doc.tags.path if doc.tags is not None else None
        status = doc.display_status or doc.indexing_status
        if self.ours(doc) and self.holder(doc) is None:  # (another host's tag wins over our old row)
            return Entry(Difference.ONLY_REMOTE_OURS, Reason.FILE_GONE, path, doc.name, doc.id, status, doc.owner)
        if doc.owner is not None:
            return Entry(Difference.ONLY_REMOTE_OTHERS, Reason.OTHER_OWNER, path, doc.name, doc.id, status,
                         doc.owner, detail=f'owner "{doc.owner}"')
        return Entry(Difference.ONLY_REMOTE_OTHERS, Reason.NO_OWNER, None, doc.name, doc.id, status)


def _judge(f: LocalFile, row: FileState | None, doc: RemoteDocument | None, pairing: _Pairing,
           no_dataset: bool) -> Entry | None:
    """One file and the document paired with it: None when they are in step."""
    policy = pairing.policy
    name = policy.name_of(f.rel_path)
    refused = refusal(f.rel_path, f.size, policy)
    doc_id = doc.id if doc is not None else None
    if refused is not None:
        return Entry(Difference.SKIPPED, refused.code, f.rel_path, name, doc_id, detail=refused.text)
    if row is not None and row.refused_sha256 and row.refused_sha256 == f.sha256:
        return Entry(Difference.SKIPPED, row.skip_code or SkipCode.REFUSED, f.rel_path, name, doc_id,
                     detail=row.skip_reason or "refused by the server")
    if doc is None:
        reason = Reason.NO_DATASET if no_dataset else \
            Reason.DOCUMENT_GONE if row is not None and row.document_id else Reason.NEW
        return Entry(Difference.ONLY_LOCAL, reason, f.rel_path, name)
    status = doc.display_status or doc.indexing_status
    tracked = row is not None and row.document_id == doc.id
    holder = pairing.holder(doc)
    if holder is not None or not (tracked or pairing.adoptable(doc)):
        who = f'owner "{holder}"' if holder else "a document difysync did not make"
        return Entry(Difference.SKIPPED, SkipCode.NAME_HELD, f.rel_path, name, doc.id, status, doc.owner,
                     detail=f"held by {who}: not sent")
    gone_wrong = _in_error(doc)
    if gone_wrong is not None:
        return Entry(Difference.IN_ERROR, gone_wrong, f.rel_path, doc.name, doc.id, status, doc.owner,
                     detail=_error_detail(doc, row if tracked else None, policy))
    why = _disagreement(f, row if tracked else None, doc, name, policy)
    if why is None:
        return None
    return Entry(Difference.DIFFERING, why, f.rel_path, doc.name, doc.id, status, doc.owner,
                 detail=f"named {doc.name!r}, should be {name!r}" if why is Reason.NAME else "")


def _in_error(doc: RemoteDocument) -> Reason | None:
    if doc.failed:
        return Reason.INDEXING_ERROR
    if doc.archived:
        return Reason.ARCHIVED
    if not doc.enabled:
        return Reason.DISABLED
    return None


def _error_detail(doc: RemoteDocument, row: FileState | None, policy: Policy) -> str:
    """The server's error text, and the quarantine a pass holds the file in after
    ``quarantine_after`` failures (then only a change or `difysync retry` sends it again)."""
    if not doc.failed:
        return ""
    quarantined = row is not None and row.sha256 is not None and row.attempts >= policy.quarantine_after
    note = f"quarantined after {row.attempts} attempts (difysync retry)" if quarantined and row else ""
    return "; ".join(part for part in (doc.error or "", note) if part)


def _disagreement(f: LocalFile, row: FileState | None, doc: RemoteDocument, name: str,
                  policy: Policy) -> Reason | None:
    """How a healthy document and its file disagree, in the planner's order: the content
    the state DB says was sent (else the one difysync's metadata names), the name, the
    split, then the metadata."""
    tagged = doc.tags.sha256 if policy.owner is not None and doc.tags is not None else None
    sent = row.sha256 if row is not None and row.sha256 else tagged
    if sent is None:
        return Reason.UNVERIFIED
    if sent != f.sha256:
        return Reason.CONTENT
    if doc.name != name:
        return Reason.NAME
    if row is not None and doc.indexing_status == "completed" and \
            (row.chunking is None if policy.chunks_locally(f.rel_path) else row.chunking == "local"):
        return Reason.SPLIT
    if policy.owner is not None and doc.tags is not None and tagged != f.sha256:
        return Reason.TAGS
    return None


def _moves(entries: list[Entry], vanished: dict[str, list[tuple[FileState, RemoteDocument]]],
           hashes: Mapping[str, str | None]) -> list[Entry]:
    """Only-local files with the content of one of our documents whose file is gone: a
    move (a pass renames that document), one line instead of two. Paired in path order."""
    out = []
    for e in entries:
        movable = e.difference is Difference.ONLY_LOCAL and e.code is not Reason.NO_DATASET
        pool = vanished.get(hashes.get(e.rel_path or "") or "") if movable else None
        if pool:
            row, doc = pool.pop(0)
            e = Entry(Difference.DIFFERING, Reason.MOVED, e.rel_path, doc.name, doc.id,
                      doc.display_status or doc.indexing_status, doc.owner, old_rel_path=row.rel_path)
        out.append(e)
    return out


def _under_any(rel: str, roots: set[str]) -> bool:
    parts = rel.split("/")
    return any("/".join(parts[:i]) in roots for i in range(1, len(parts) + 1))


def _rank(doc: RemoteDocument) -> tuple[int, int, str]:
    """The planner's preference among documents of one name: enabled and live, then the oldest."""
    return (0 if doc.enabled and not doc.archived else 1, doc.created_at, doc.id)


# --- gathering (reads only) ------------------------------------------------------------------


@dataclass(frozen=True)
class FolderDiff:
    folder: FolderSettings
    dataset_id: str | None
    comparison: Comparison
    # The dataset difysync synced the folder into (found by name) was deleted in Dify: a
    # pass stops rather than make it again (unless told to), so "only local" is no upload plan.
    dataset_deleted: bool = False


def diff_folder(client: DifyClient, store: StateBackend | None, settings: Settings,
                folder: FolderSettings) -> FolderDiff:
    """Scan and hash the folder as a pass does (only files whose stat differs from the
    state DB are read), load its rows and list its dataset, then compare. ``store`` None:
    there is no state DB yet. Raises DifyError when the server cannot be asked."""
    policy = policy_for(settings, folder, None)
    dataset_id, remote, deleted = _remote_side(client, store, folder)
    known = store.known_metadata(dataset_id) if store is not None and dataset_id else None
    if known is not None and not known.supported:  # no metadata API there: ownership is the state DB's
        policy = replace(policy, owner=None)
    root = Path(folder.path)
    scan = scan_tree(root, folder.include, folder.exclude)
    rows = store.load_folder(folder.key, seen={f.rel_path: f for f in scan.files}) if store is not None else {}
    files, _, unreadable, _ = with_hashes(scan.files, rows, root, policy)
    journal = store.pending_journal(folder.key) if store is not None else []
    sides = Sides(files, rows, remote, (*scan.problems, *unreadable),
                  frozenset(e.document_name for e in journal if e.op in ("create", "recreate")), scan.root_error)
    return FolderDiff(folder, dataset_id, compare(sides, policy), dataset_deleted=deleted)


def _remote_side(client: DifyClient, store: StateBackend | None,
                 folder: FolderSettings) -> tuple[str | None, list[RemoteDocument] | None, bool]:
    """The folder's dataset as a pass resolves it (never made, never remembered), its
    listing (None: no dataset), and whether the one it was synced into was deleted. A
    remembered id Dify no longer knows is looked up by name again, as a pass would."""
    dataset_id = resolve_dataset(client, store, folder, create=False, remember=False, recall=store is not None)
    if dataset_id is None:
        return None, None, False
    try:
        return dataset_id, client.list_documents(dataset_id), False
    except DatasetMissing as exc:
        if store is None or not stale_dataset(store, folder, exc):
            return None, None, False
    dataset_id = resolve_dataset(client, store, folder, create=False, remember=False, recall=False)
    if dataset_id is None:
        return None, None, True
    return dataset_id, client.list_documents(dataset_id), False


# --- for programs and people -----------------------------------------------------------------


def diff_json(results: Sequence[FolderDiff]) -> dict[str, Any]:
    """``diff --json``: ``in_step`` (the exit code's answer) and one object per folder;
    see the README's diff section for the keys."""
    return {"in_step": all(r.comparison.ok for r in results), "folders": [_folder_json(r) for r in results]}


def _folder_json(r: FolderDiff) -> dict[str, Any]:
    c = r.comparison
    return {"folder": r.folder.key, "dataset_id": r.dataset_id, "dataset_name": r.folder.dataset_name or None,
            "in_step": c.ok, "root_error": c.root_error, "dataset_missing": c.dataset_missing,
            "dataset_deleted": r.dataset_deleted,
            "remote_documents": c.remote_documents, "counts": c.counts(),
            "entries": [entry_json(e) for e in c.entries]}


def entry_json(e: Entry) -> dict[str, Any]:
    return {"difference": e.difference.value, "code": e.code.value, "path": e.rel_path, "old_path": e.old_rel_path,
            "document_name": e.document_name, "document_id": e.document_id, "status": e.status, "owner": e.owner,
            "reason": e.describe()}


_LABELS: dict[Difference, tuple[str, str, str]] = {  # (line label, rich style, in the counts)
    Difference.ONLY_LOCAL: ("only local", "cyan", "only local"),
    Difference.ONLY_REMOTE_OURS: ("only remote", "magenta", "only remote (ours)"),
    Difference.ONLY_REMOTE_OTHERS: ("remote, not ours", "blue", "only remote (not ours)"),
    Difference.DIFFERING: ("differs", "yellow", "differing"),
    Difference.IN_ERROR: ("in error", "red", "in error"),
    Difference.SKIPPED: ("skipped", "dim", "skipped"),
}


_LABEL_WIDTH = max(len(label) for label, _, _ in _LABELS.values())


def summary(c: Comparison) -> str:
    """The counts, in step first; categories with nothing in them are left out."""
    indexing = f" ({c.indexing} still indexing)" if c.indexing else ""
    parts = [f"{c.in_step} in step{indexing}"]
    parts += [f"{n} {_LABELS[d][2]}" for d in Difference if (n := c.count(d))]
    return " · ".join(parts)


def print_diffs(results: Sequence[FolderDiff]) -> None:
    """One heading per folder, one line per difference (80 columns: long paths and
    reasons are cut, never wrapped), then the counts."""
    from rich.console import Console

    console = Console(highlight=False)
    for r in results:
        _print_folder(console, r)


def _print_folder(console: Any, r: FolderDiff) -> None:
    from rich.markup import escape
    from rich.table import Table

    c, folder = r.comparison, r.folder
    dataset = folder.dataset_name or r.dataset_id or folder.dataset_id
    console.print(f"[bold]{escape(printable(folder.key))}[/bold] -> dataset {escape(repr(dataset))}")
    if c.root_error:
        console.print(f"[red]{escape(printable(c.root_error))}: nothing compared[/red]; the dataset's "
                      f"{c.remote_documents} documents are left unjudged (reconcile refuses this folder too)")
        return
    if r.dataset_deleted:
        console.print("[yellow]the dataset this folder was synced into was deleted in Dify: every file is only "
                      "local (reconcile stops until it is given --recreate-dataset)[/yellow]")
    elif c.dataset_missing:
        later = " yet (the first reconcile makes it)" if not folder.dataset_id else " for this API key"
        console.print(f"[yellow]the dataset does not exist{later}: every file is only local[/yellow]")
    if c.entries:
        lines = [(e, _where(e), printable(e.describe() or str(e.code))) for e in c.entries]
        path_width, reason_width = _widths(console.width, [w for _, w, _ in lines], [r for _, _, r in lines])
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
        table.add_column("what", no_wrap=True, width=_LABEL_WIDTH)
        table.add_column("path", no_wrap=True, overflow="ellipsis", width=path_width)
        table.add_column("reason", no_wrap=True, overflow="ellipsis", width=reason_width)
        for e, where, reason in lines:
            label, style, _ = _LABELS[e.difference]
            table.add_row(f"[{style}]{label}[/{style}]", escape(where), escape(reason))
        console.print(table)
    console.print(summary(c))


def _where(e: Entry) -> str:
    where = e.rel_path or e.document_name or e.document_id or ""
    return printable(f"{e.old_rel_path} -> {where}" if e.old_rel_path else where)


def _widths(total: int, paths: Sequence[str], reasons: Sequence[str]) -> tuple[int, int]:
    """(path, reason) column widths so that a line fits ``total`` columns: the reasons
    get what the longest path leaves, but at least two fifths of the room."""
    from rich.cells import cell_len

    room = max(20, total - _LABEL_WIDTH - 4)  # (two gaps of two spaces)
    path = max(cell_len(p) for p in paths)
    reason = max(cell_len(r) for r in reasons)
    if path + reason <= room:
        return path, reason
    reason = min(reason, max(room * 2 // 5, room - path))
    return room - reason, reason
