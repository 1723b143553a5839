"""One pass over the configured folders: scan -> list remote -> plan -> apply.

Used alike by the one-shot CLI and by the daemon (which also runs targeted passes over a
few dirty paths). Hashing happens here, and only for files whose size, mtime or inode
differ from the state store. A pass where nothing changed costs a walk with stat and a
seven-request probe of the dataset (marks.py), or, at least every
``schedule.full_listing_minutes``, one listing call per hundred documents.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import marks
from .apply import FolderContext, Outcome, Stopped, apply_actions, count_outcomes
from .config import FolderSettings, Settings
from .dify import DifyClient
from .errors import AuthError, DifyError, DifySyncError, StateWriteError
from .models import FileState, JournalEntry, LocalFile, RemoteDocument, ScanProblem
from .naming import document_name
from .plan import Kind, MaxDelete, Plan, Policy, is_settled, plan_folder, refusal_reason
from .scanner import scan_tree, sha256_file, stat_paths
from .state import StateStore

log = logging.getLogger("difysync")


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
    # How the remote side was seen: "listing" (every document), "probe" (a few requests
    # proved nothing changed since the last clean pass), "names" (targeted lookups).
    remote_check: str = ""

    @property
    def counts(self) -> dict[str, int]:
        unchanged = self.plan.unchanged if self.plan else 0
        if self.outcomes or not self.plan:
            return count_outcomes(self.outcomes, unchanged)
        return planned_counts(self.plan)

    @property
    def ok(self) -> bool:
        return not self.errors and self.fatal is None and self.counts["failed"] == 0


@dataclass
class RunReport:
    folders: list[FolderReport]
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for f in self.folders:
            for k, v in f.counts.items():
                total[k] = total.get(k, 0) + v
        if not total:
            total = count_outcomes([])
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
        out: dict[tuple[str, str], set[str]] = {}
        for f in self.folders:
            for o in f.outcomes:
                if o.result == "ok" and o.action.kind in (Kind.CREATE, Kind.UPDATE, Kind.RENAME,
                                                          Kind.RECREATE) and o.document_id and f.dataset_id:
                    out.setdefault((f.folder, f.dataset_id), set()).add(o.document_id)
        return out


def planned_counts(plan: Plan) -> dict[str, int]:
    counts = count_outcomes([], plan.unchanged)
    names = {Kind.CREATE: "created", Kind.RECREATE: "created", Kind.UPDATE: "updated",
             Kind.RENAME: "renamed", Kind.DELETE: "deleted", Kind.SKIP: "skipped",
             Kind.WAIT: "waiting", Kind.ADOPT: "unchanged"}
    for a in plan.actions:
        if a.kind in names:
            counts[names[a.kind]] += 1
    return counts


def folder_key(folder: FolderSettings) -> str:
    return str(Path(folder.path))


def policy_for(settings: Settings, folder: FolderSettings, max_delete: MaxDelete | None) -> Policy:
    return Policy(allowed_extensions=frozenset(settings.dify.allowed_extensions),
                  max_bytes=int(settings.dify.max_file_size_mb * 1024 * 1024),
                  delete=folder.delete, max_delete=max_delete or MaxDelete(),
                  allow_empty=max_delete is not None,
                  max_attempts=settings.dify.max_attempts)


def resolve_dataset(client: DifyClient, folder: FolderSettings, *, create: bool) -> str | None:
    """The folder's dataset id: given, or found by name (created when absent and allowed)."""
    if folder.dataset_id:
        return folder.dataset_id
    if create:
        return client.ensure_dataset(folder.dataset_name, folder.indexing_technique)
    found = client.find_dataset(folder.dataset_name)
    return str(found["id"]) if found else None


def with_hashes(files: Sequence[LocalFile], rows: Mapping[str, FileState], root: Path,
                policy: Policy) -> tuple[list[LocalFile], list[LocalFile], list[ScanProblem], int]:
    """Attach sha256 to each eligible file: the stored one when size, mtime and inode are
    unchanged, else a fresh streamed hash. Returns (files, restat, problems, hashed) where
    ``restat`` are files whose hash matched the store but whose stat moved."""
    # Entries are replaced in place, so a big tree never holds two copies of its records.
    out = files if isinstance(files, list) else list(files)
    restat: list[LocalFile] = []
    problems: list[ScanProblem] = []
    hashed = 0
    unreadable: list[int] = []
    for i, f in enumerate(out):
        if refusal_reason(f.rel_path, f.size, policy):
            continue
        row = rows.get(f.rel_path)
        if row is not None and row.sha256 and row.size == f.size and row.mtime_ns == f.mtime_ns \
                and row.inode == f.inode:
            # Built from the row's own objects (equal values), so the scan's copies go.
            out[i] = LocalFile(row.rel_path, row.size, row.mtime_ns, row.inode, row.sha256)
            continue
        try:
            digest, _ = sha256_file(root / f.rel_path)
        except OSError as exc:
            problems.append(ScanProblem(f.rel_path, f"cannot read file: {exc.strerror or exc}"))
            unreadable.append(i)
            continue
        hashed += 1
        fresh = LocalFile(f.rel_path, f.size, f.mtime_ns, f.inode, digest)
        out[i] = fresh
        if row is not None and row.sha256 == digest and row.document_id:
            restat.append(fresh)
    for i in reversed(unreadable):
        del out[i]
    return out, restat, problems, hashed


def upload_data(folder: FolderSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    create = {"indexing_technique": folder.indexing_technique, "process_rule": dict(folder.process_rule)}
    update = {"process_rule": dict(folder.process_rule)}
    return create, update


def reconcile_folder(settings: Settings, folder: FolderSettings, client: DifyClient, store: StateStore,
                     *, dry_run: bool = False, max_delete: MaxDelete | None = None,
                     paths: Iterable[str] | None = None,
                     on_outcome: Callable[[Outcome], None] | None = None,
                     on_plan: Callable[[Plan], None] | None = None,
                     should_stop: Callable[[], bool] = lambda: False,
                     full_listing: bool = False) -> FolderReport:
    """One folder, whole (``paths`` None) or only the given relative paths (targeted).

    A whole pass whose scan equals the last clean pass's, on a dataset a probe shows
    unchanged, ends right there (see marks.py), unless ``full_listing``."""
    key = folder_key(folder)
    root = Path(folder.path)
    report = FolderReport(folder=key, dataset_id=folder.dataset_id or None)
    started = time.time()
    policy = policy_for(settings, folder, max_delete)
    try:
        dataset_id = resolve_dataset(client, folder, create=not dry_run)
        report.dataset_id = dataset_id

        digest = mark_key = None
        if paths is None:
            mark_key = marks.policy_key(policy, dataset_id, folder.include, folder.exclude) if dataset_id else None
            max_age = 0.0 if full_listing else settings.schedule.full_listing_minutes * 60
            files, problems, root_error, digest, quiet = _scan_or_quiet(client, store, folder, dataset_id,
                                                                        mark_key, max_age)
            if quiet is not None:
                report.remote_check = "probe"
                report.plan = Plan(quiet.skips, unchanged=quiet.unchanged)
                report.outcomes = [Outcome(a, "skipped", a.reason, repeat=True) for a in quiet.skips]
                if on_plan is not None:
                    on_plan(report.plan)
                return report
            rows = store.load_folder(key, seen={f.rel_path: f for f in files})
        else:
            wanted = sorted(set(paths))
            files, problems, _gone = stat_paths(root, wanted, folder.include, folder.exclude)
            root_error = None if root.is_dir() else f"folder root {root} is missing"
            rows = store.load_paths(key, wanted)
        if root_error:
            policy = replace(policy, root_error=root_error)
        if paths is not None:
            policy = replace(policy, whole_folder=False)
        problem_paths = {p.rel_path for p in problems}
        files, restat, hash_problems, report.hashed = with_hashes(files, rows, root, policy)
        problems.extend(hash_problems)
        problem_paths.update(p.rel_path for p in hash_problems)
        report.problems = problems

        remote: list[RemoteDocument] = []
        journal = store.pending_journal(key)
        if paths is not None:  # a targeted pass plans (and may resolve) only its own paths
            journal = [e for e in journal if _under_any(e.rel_path, set(wanted))]
        journal_rest = journal
        status_changes: dict[str, tuple[str, str | None]] = {}
        recorder = marks.ListingRecorder()
        if dataset_id:
            if paths is None and not root_error:
                # Settled files cannot change any decision (tests/test_plan.py proves it);
                # leaving them out keeps a no-op pass over a big folder small in memory.
                remote, files, rows, settled = _list_unsettled(client, dataset_id, files, rows, journal,
                                                               policy, status_changes, recorder)
                journal_rest = [e for e in journal if e.rel_path not in settled.journaled]
                policy = replace(policy, settled_elsewhere=settled.count)
                report.remote_check = "listing"
            elif paths is None:
                remote = client.list_documents(dataset_id)
                report.remote_check = "listing"
            else:
                remote = _remote_for_paths(client, dataset_id, rows, files)
                report.remote_check = "names"
        # A problem on a folder (unreadable, say) means its contents are unknown, not
        # deleted: rows under it are kept out of the plan, so nothing there is deleted.
        plan_rows = rows if not problem_paths else \
            {rel: row for rel, row in rows.items() if not _under_any(rel, problem_paths)}
        plan = plan_folder(files, plan_rows, remote, journal_rest, policy)
        if paths is not None:
            plan = _guard_targeted(plan, root, store.count_tracked(key), policy)
        report.plan = plan
        if on_plan is not None:
            on_plan(plan)
        report.errors.extend(plan.errors)
        for warning in plan.warnings:
            log.warning("%s", warning)
        if dry_run:
            return report
        if not dataset_id:
            return report

        tracked = {row.document_id: row for row in rows.values() if row.document_id}
        status_changes.update({
            d.id: (d.indexing_status, d.error) for d in remote
            if d.id in tracked and (tracked[d.id].indexing_status != d.indexing_status
                                    or (d.indexing_status == "error" and not tracked[d.id].last_error))})
        store.refresh_statuses(key, status_changes)
        del tracked
        store.update_stats(key, restat)
        store.record_skips(key, dataset_id, [(None, p.rel_path, p.reason) for p in problems])

        ctx = FolderContext(key=key, root=root, dataset_id=dataset_id,
                            create_data=upload_data(folder)[0], update_data=upload_data(folder)[1],
                            max_bytes=policy.max_bytes)
        try:
            report.outcomes = apply_actions(plan.actions, ctx, client, store, rows,
                                            concurrency=settings.dify.concurrency,
                                            local={f.rel_path: f for f in files},
                                            on_outcome=on_outcome, should_stop=should_stop)
        except Stopped as stop:
            report.outcomes = stop.outcomes
            raise stop.error from None
        # Journal rows from an earlier, interrupted pass were inputs to this plan; those
        # whose path came through it without a failure or a wait are resolved by it.
        store.clear_journal(_resolved(journal, report.outcomes))
        adopted = {o.document_id for o in report.outcomes if o.action.kind is Kind.ADOPT and o.result == "ok"}
        if adopted:  # so that the next pass finds them settled
            store.refresh_statuses(key, {d.id: (d.indexing_status, d.error) for d in remote if d.id in adopted})
        if digest is not None and mark_key is not None and not journal and not hash_problems \
                and report.ok and _changes_nothing(plan):
            fingerprint = recorder.fingerprint()
            if fingerprint is not None:
                mark = marks.Mark(mark_key, digest, fingerprint, plan.unchanged,
                                  tuple(a for a in plan.actions if a.kind is Kind.SKIP), time.time())
                store.save_mark(key, dataset_id, mark.to_json())
    except DifyError as exc:
        report.fatal = exc
        report.errors.append(exc.describe())
    except StateWriteError as exc:
        report.fatal = exc
        report.errors.append(str(exc))
    finally:
        if not dry_run and paths is None:
            try:
                store.record_run(key, "full", started, report.ok, report.counts)
                if report.remote_check == "listing" and report.fatal is None:
                    store.record_run(key, "listing", started, True, {})
            except Exception:  # noqa: BLE001 - the run record is a nicety; never mask the pass
                log.debug("could not record the run", exc_info=True)
    return report


def _scan_or_quiet(client: DifyClient, store: StateStore, folder: FolderSettings, dataset_id: str | None,
                   mark_key: str | None, max_age: float,
                   ) -> tuple[list[LocalFile], list[ScanProblem], str | None, str | None, marks.Mark | None]:
    """Scan the folder; with a usable mark, probe the dataset meanwhile (a few round trips
    that cost nothing next to the walk). Returns (files, problems, root error, scan digest,
    the mark when both the scan and the dataset still match it)."""
    key = folder_key(folder)
    candidate = _usable_mark(store, key, dataset_id, mark_key, max_age) if dataset_id else None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="difysync-probe") as pool:
        probing = pool.submit(marks.probe, client, dataset_id) if candidate is not None else None
        scan = scan_tree(Path(folder.path), folder.include, folder.exclude)
        files, problems, root_error = scan.files, list(scan.problems), scan.root_error
        del scan  # with_hashes makes the list that lives on; keep one copy in memory
        digest = marks.scan_digest(files, problems) if dataset_id and not root_error else None
        if candidate is None or probing is None:  # (never one without the other)
            return files, problems, root_error, digest, None
        if digest != candidate.scan_digest:
            probing.cancel()
            return files, problems, root_error, digest, None
        if probing.result() != candidate.remote:
            log.debug("%s: the dataset changed since the last clean pass (or cannot be probed): listing it", key)
            return files, problems, root_error, digest, None
    return files, problems, root_error, digest, candidate


def _usable_mark(store: StateStore, key: str, dataset_id: str, mark_key: str | None,
                 max_age: float) -> marks.Mark | None:
    """The folder's mark, if it is recent, made under this configuration, and for a
    dataset big enough that probing beats listing; the scan still has to match it."""
    body = store.load_mark(key, dataset_id)
    mark = marks.Mark.from_json(body) if body else None
    if mark is None or not mark.fresh(max_age) or not mark.worth_probing or mark.policy_key != mark_key:
        return None
    return mark


def _resolved(journal: Sequence[JournalEntry], outcomes: Sequence[Outcome]) -> list[int]:
    """The journal rows this pass settled: a row stays while its path has an action that
    failed, was not attempted or has to wait (the row may be all that says a document
    is ours)."""
    open_paths = {o.action.rel_path for o in outcomes if o.result in ("failed", "waiting")}
    return [e.id for e in journal if e.rel_path not in open_paths]


def _changes_nothing(plan: Plan) -> bool:
    """Only skips: the same inputs would give the same plan, with nothing to send."""
    return not plan.errors and not plan.warnings and all(a.kind is Kind.SKIP for a in plan.actions)


@dataclass
class _Settled:
    count: int = 0
    journaled: set[str] = field(default_factory=set)  # settled paths that have journal rows


def _list_unsettled(client: DifyClient, dataset_id: str, files: list[LocalFile],
                    rows: dict[str, FileState], journal: Sequence[JournalEntry], policy: Policy,
                    status_changes: dict[str, tuple[str, str | None]], recorder: marks.ListingRecorder,
                    ) -> tuple[list[RemoteDocument], list[LocalFile], dict[str, FileState], _Settled]:
    """The listing minus the documents of settled files, and the files and rows minus the
    settled ones: on a folder where nothing changed that is everything, and it is let go
    page by page as the listing arrives, so a no-op pass never holds the dataset twice.
    Status changes of settled documents (queued last time, completed now) are collected
    for the state store. ``files`` and ``rows`` are consumed."""
    local = {f.rel_path: f for f in files}
    files.clear()  # from here on each record lives in ``local`` alone, and goes when settled
    by_doc = {row.document_id: row for row in rows.values() if row.document_id}
    journaled = {e.rel_path for e in journal}
    settled = _Settled()

    def keep(doc: RemoteDocument) -> bool:  # runs on the listing's threads: pops are atomic
        row = by_doc.get(doc.id)
        if row is None or not is_settled(local.get(row.rel_path), row, doc, policy):
            return True
        if row.indexing_status != doc.indexing_status:
            status_changes[doc.id] = (doc.indexing_status, doc.error)
        by_doc.pop(doc.id, None)
        rows.pop(row.rel_path, None)
        local.pop(row.rel_path, None)
        settled.count += 1
        if row.rel_path in journaled:
            settled.journaled.add(row.rel_path)
        return False

    remote = client.list_documents(dataset_id, keep=keep, on_page=recorder.on_page)
    return remote, list(local.values()), rows, settled


def _under_any(rel: str, roots: set[str]) -> bool:
    if not roots:
        return False
    if rel in roots:
        return True
    parts = rel.split("/")
    return any("/".join(parts[:i]) in roots for i in range(1, len(parts)))


def _guard_targeted(plan: Plan, root: Path, tracked: int, policy: Policy) -> Plan:
    """A targeted pass sees a few paths, so the planner's whole-folder guards cannot
    judge it; judge its deletes against the whole folder here instead. A folder whose
    contents were removed wholesale (events for every file) must not be emptied remotely
    one event at a time."""
    deletes = [a for a in plan.actions if a.kind is Kind.DELETE and "interrupted" not in a.reason]
    errors = list(plan.errors)
    if not deletes:
        return plan
    limit = policy.max_delete.limit(tracked)
    reason = None
    if (len(deletes) >= tracked or not _has_entries(root)) and not policy.allow_empty:
        reason = (f"these deletes would empty the folder's {tracked} tracked documents (unmounted or "
                  f"wiped?): refusing; a full pass with --max-delete lifts this")
    elif len(deletes) > limit:
        reason = (f"this pass would delete {len(deletes)} of {tracked} tracked documents, more than "
                  f"the limit of {limit}: nothing deleted")
    if reason is None:
        return replace(plan, errors=tuple(errors))
    kept = tuple(a for a in plan.actions if not (a.kind is Kind.DELETE and a in deletes))
    return replace(plan, actions=kept, errors=tuple(errors) + (reason,))


def _has_entries(root: Path) -> bool:
    try:
        with os.scandir(root) as it:
            return any(True for _ in it)
    except OSError:
        return False


def _remote_for_paths(client: DifyClient, dataset_id: str, rows: Mapping[str, FileState],
                      files: Sequence[LocalFile]) -> list[RemoteDocument]:
    """The remote documents a targeted pass can touch: listing the whole dataset for a
    handful of paths would defeat the point on big datasets, so look up by name."""
    names = {row.document_name for row in rows.values() if row.document_name}
    names.update(document_name(f.rel_path) for f in files)
    out: dict[str, RemoteDocument] = {}
    if len(names) > 20:
        return client.list_documents(dataset_id)
    for name in sorted(names):
        for doc in client.find_documents(dataset_id, name):
            out[doc.id] = doc
    return list(out.values())


def reconcile(settings: Settings, client: DifyClient, store: StateStore, *, dry_run: bool = False,
              max_delete: MaxDelete | None = None,
              on_outcome: Callable[[Outcome], None] | None = None,
              full_listing: bool = False) -> RunReport:
    """Every configured folder, one after the other. A fatal error for one folder (its
    dataset missing, say) does not stop the others; a rejected key stops them all."""
    started = time.monotonic()
    reports = []
    for folder in settings.folders:
        report = reconcile_folder(settings, folder, client, store, dry_run=dry_run,
                                  max_delete=max_delete, on_outcome=on_outcome, full_listing=full_listing)
        reports.append(report)
        if isinstance(report.fatal, AuthError):
            break
    return RunReport(folders=reports, dry_run=dry_run, seconds=time.monotonic() - started)


def wait_for_indexing(client: DifyClient, store: StateStore,
                      touched: Mapping[tuple[str, str], set[str]], *, timeout: float,
                      interval: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> tuple[bool, dict[str, int]]:
    """Poll the listing (one call per hundred documents, not one per document) until every
    touched document is completed or in error. Returns (finished, counts by status)."""
    deadline = clock() + timeout
    statuses: dict[str, str] = {}
    while True:
        statuses = {}
        for (key, dataset_id), ids in touched.items():
            docs = {d.id: d for d in client.list_documents(dataset_id)}
            store.refresh_statuses(key, {i: (docs[i].indexing_status, docs[i].error)
                                         for i in ids if i in docs})
            for i in ids:
                statuses[i] = docs[i].indexing_status if i in docs else "gone"
        if all(s in ("completed", "error", "gone", "paused") for s in statuses.values()):
            return True, _tally(statuses)
        if clock() >= deadline:
            return False, _tally(statuses)
        sleep(min(interval, max(0.0, deadline - clock())))
        interval = min(interval * 1.5, 10.0)


def _tally(statuses: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses.values():
        out[s] = out.get(s, 0) + 1
    return out


@dataclass
class RebuildReport:
    folder: str
    adopted: int = 0
    not_uploaded: int = 0
    foreign: int = 0
    error: str | None = None


def rebuild_state(settings: Settings, client: DifyClient, store: StateStore) -> list[RebuildReport]:
    """Refill an empty state DB from the remote listing and the local tree, uploading
    nothing: every local file whose document name is in the dataset is linked to that
    document (with its hash when the sizes match, else marked for an update on the next
    pass); files not in Dify yet are left for the next reconcile."""
    out = []
    for folder in settings.folders:
        key = folder_key(folder)
        report = RebuildReport(folder=key)
        out.append(report)
        try:
            dataset_id = resolve_dataset(client, folder, create=False)
            if not dataset_id:
                report.error = f"dataset {folder.dataset_name!r} does not exist yet"
                continue
            policy = policy_for(settings, folder, None)
            scan = scan_tree(Path(folder.path), folder.include, folder.exclude)
            if scan.root_error:
                report.error = scan.root_error
                continue
            files, _, _, _ = with_hashes(scan.files, {}, Path(folder.path), policy)
            remote = client.list_documents(dataset_id)
            plan = plan_folder(files, {}, remote, [], policy)
            by_path = {f.rel_path: f for f in files}
            linked = set()
            for a in plan.actions:
                if a.kind in (Kind.ADOPT, Kind.UPDATE, Kind.RECREATE, Kind.WAIT) and a.document_id:
                    f = by_path[a.rel_path]
                    exact = a.kind is Kind.ADOPT and a.sha256 is not None
                    store.settle_upload(None, key, dataset_id, a.rel_path, document_id=a.document_id,
                                        document_name=a.document_name or "", batch=None,
                                        sha256=a.sha256 if exact else None,
                                        size=f.size if exact else None,
                                        mtime_ns=f.mtime_ns if exact else None,
                                        inode=f.inode if exact else None, indexing_status=None)
                    linked.add(a.document_id)
                    report.adopted += 1
                elif a.kind is Kind.CREATE:
                    report.not_uploaded += 1
            report.foreign = sum(1 for d in remote if d.id not in linked)
        except DifyError as exc:
            report.error = exc.describe()
    return out


__all__ = ["FolderReport", "RebuildReport", "RunReport", "folder_key", "rebuild_state", "reconcile",
           "reconcile_folder", "wait_for_indexing"]
