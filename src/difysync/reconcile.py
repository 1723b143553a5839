"""One pass over a folder: scan -> remote view -> plan -> apply -> record.

Used alike by the one-shot CLI and by the service, which also runs targeted passes over a
few dirty paths. A mutating pass holds the folder's write lease (lease.py) from its first
read of the state to its last write. Hashing happens here, and only for files whose
size, mtime or inode differ from the state store. What the pass asks Dify is remote.py's
business; a pass where nothing changed costs a walk with stat and a seven-request probe
(marks.py), or, at least every ``schedule.full_listing_minutes``, one listing call per
hundred documents. Nothing here imports the CLI, the daemon or the watcher.
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from . import marks
from .outcomes import Outcome, Result, Stopped
from .dify import DifyClient
from .errors import DatasetMissing, DifySyncError, verdict
from .events import NOBODY, Observer, Phase
from .lease import FolderLocks, Holder
from .logs import log_fields
from .models import FileState, JournalEntry, LocalFile, RemoteDocument, ScanProblem
from .plan import UPLOADS, Adoptions, Kind, MaxDelete, Plan, Policy, plan_folder, refusal
from .remote import RemoteView, metadata_fields, resolve_dataset, stale_dataset
from .report import FolderReport, RemoteCheck, RunReport
from .scanner import ScanResult, scan_tree, sha256_file, stat_paths
from .walkshare import StandingHelpers, Walk, begin_scan
from .state import Skip, StateBackend

if TYPE_CHECKING:  # pragma: no cover - (a one-shot pass may run on settingsfile's plain values)
    from .candidates import Candidates
    from .config import FolderSettings, Settings
    from .segsync import LocalChunking

log = logging.getLogger("difysync")


@dataclass(frozen=True)
class Env:
    """What every pass works with: the settings, the client, the state, and who we are
    (named in the lock files)."""

    settings: Settings
    client: DifyClient
    store: StateBackend
    who: str = "difysync reconcile"
    # Processes that may share a whole pass's walk (walkshare.py): a one-shot command forks
    # up to ``walk_helpers`` per walk; the service lends its standing ones.
    walk_helpers: int = 0
    standing_helpers: StandingHelpers | None = None
    # Walks the command began before it had loaded what a pass needs, by folder key (see
    # cli.walks_ahead): a whole pass of that folder takes its own instead of beginning one.
    walks_ahead: Mapping[str, Walk] = field(default_factory=dict)


@dataclass(frozen=True)
class PassOptions:
    dry_run: bool = False
    max_delete: MaxDelete | None = None  # given: the user lifted the guards this far
    full_listing: bool = False           # list the dataset even when a probe shows no change
    paths: tuple[str, ...] | None = None  # a targeted pass over these relative paths
    lock_timeout: float | None = 60.0    # seconds to wait for the write lease; None: until stopped
    recreate_dataset: bool = False       # a dataset found by name that was deleted in Dify is made again


@dataclass(frozen=True)
class Hooks:
    on_outcome: Callable[[Outcome], None] | None = None
    on_plan: Callable[[Plan], None] | None = None
    should_stop: Callable[[], bool] = lambda: False
    on_lease_wait: Callable[[Holder | None], None] | None = None
    observer: Observer = NOBODY  # progress and metrics: see events.py


def folder_key(folder: FolderSettings) -> str:
    return folder.key


def policy_for(settings: Settings, folder: FolderSettings, max_delete: MaxDelete | None) -> Policy:
    return Policy(allowed_extensions=frozenset(settings.dify.allowed_extensions),
                  max_bytes=int(settings.dify.max_file_size_mb * 1024 * 1024),
                  delete=folder.delete, max_delete=max_delete or MaxDelete(),
                  allow_empty=max_delete is not None,
                  quarantine_after=settings.dify.quarantine_after,
                  owner=settings.owner if settings.metadata.enabled else None,
                  name_prefix=folder.name_prefix,
                  local_chunk_types=frozenset(folder.local_chunk_types) if folder.chunking == "local" else frozenset())


def reconcile(env: Env, options: PassOptions = PassOptions(), hooks: Hooks = Hooks()) -> RunReport:
    """Every configured folder, one after the other. A fatal error for one folder (its
    dataset missing, say) does not stop the others; one that no folder can get past (a
    rejected key) stops them all."""
    started = time.monotonic()
    reports = []
    for folder in env.settings.folders:
        report = reconcile_folder(env, folder, options, hooks)
        reports.append(report)
        if report.fatal is not None and verdict(report.fatal).stops_run:
            break
    return RunReport(folders=reports, dry_run=options.dry_run, seconds=time.monotonic() - started)


def reconcile_folder(env: Env, folder: FolderSettings, options: PassOptions = PassOptions(),
                     hooks: Hooks = Hooks()) -> FolderReport:
    """One folder, whole (``options.paths`` None) or only the given relative paths.

    A whole pass whose scan equals the last clean pass's, on a dataset a probe shows
    unchanged, ends right after the walk (see marks.py), unless ``full_listing``."""
    started, clock = time.time(), time.monotonic()
    report = FolderReport(folder=folder.key, dataset_id=folder.dataset_id or None)
    ahead = env.walks_ahead.get(folder.key) if options.paths is None else None
    try:
        with _lease(env, folder, options, _ahead_stale_on_wait(hooks, ahead)):
            report = _attempt(env, folder, options, hooks, walk=ahead)
            if report.fatal is not None and stale_dataset(env.store, folder, report.fatal):
                log.info("%s: dataset %r is not where it was; looking it up by name again", folder.label,
                         folder.dataset_name, extra=log_fields(folder=folder.label))
                report = _attempt(env, folder, options, hooks, recall=False)
            if not options.dry_run and options.paths is None:
                _record_run(env.store, folder.key, started, report)
    except DifySyncError as exc:  # the lease (busy, or given up): no pass ran, none is recorded
        report.fatal = exc
        report.errors.append(exc.describe())
    # The name as configured (a folder given by id costs no request to name: it shows the id).
    report.dataset_name, report.seconds = folder.dataset_name or None, time.monotonic() - clock
    hooks.observer.phase(folder.key, Phase.IDLE if report.fatal is None else Phase.ERROR)
    return report


def _ahead_stale_on_wait(hooks: Hooks, ahead: Walk | None) -> Hooks:
    """Hooks under which a wait for the lease also drops the walk begun ahead: the folder
    may change while another writer holds it, so the pass walks it afresh once it may write."""
    if ahead is None:
        return hooks
    told = hooks.on_lease_wait

    def on_lease_wait(holder: Holder | None) -> None:
        ahead.close()
        if told is not None:
            told(holder)

    return replace(hooks, on_lease_wait=on_lease_wait)


def _lease(env: Env, folder: FolderSettings, options: PassOptions, hooks: Hooks) -> ContextManager[Any]:
    """The write lease for a pass that may mutate; a dry run needs none."""
    if options.dry_run:
        return nullcontext()
    locks = FolderLocks(Path(env.settings.state_db), folder.key, what=env.who)
    return locks.pass_lease(options.lock_timeout, hooks.should_stop, hooks.on_lease_wait)


def _attempt(env: Env, folder: FolderSettings, options: PassOptions, hooks: Hooks, *,
             recall: bool = True, walk: Walk | None = None) -> FolderReport:
    """One try at the pass (``recall=False``: without the remembered dataset id), with the
    ``walk`` begun ahead if there is one; Dify's and the state DB's errors end up in the
    report."""
    run = _Pass(env, folder, options, hooks, recall=recall)
    run.walk_ahead = walk if walk is not None and not walk.closed else None
    try:
        run.run()
    except Stopped as stop:
        run.report.outcomes = stop.outcomes
        run.report.fatal = stop.error
        run.report.errors.append(stop.error.describe())
    except DifySyncError as exc:
        run.report.fatal = exc
        run.report.errors.append(exc.describe())
    return run.report


def _record_run(store: StateBackend, key: str, started: float, report: FolderReport) -> None:
    """Every whole pass is the folder's last attempt, with its outcome; only a pass that
    succeeded is its last full pass (a refused or failed one must not look like one)."""
    try:
        error = report.fatal.describe() if report.fatal is not None else (report.errors or [None])[0]
        if error is None and not report.ok:
            error = f"{report.counts['failed']} failed, {report.counts['stopped']} not attempted"
        store.record_run(key, "attempt", started, report.ok, {**report.counts, "error": error})
        if report.ok:
            store.record_run(key, "full", started, True, report.counts)
        if report.remote_check is RemoteCheck.LISTING and report.fatal is None:
            store.record_run(key, "listing", started, True, {})
    except Exception:  # noqa: BLE001 - the run record is a nicety; never mask the pass
        log.debug("could not record the run", exc_info=True)


@dataclass
class _Inputs:
    """What the planner is given, and what the pass must remember about how it got it."""

    files: list[LocalFile]
    rows: dict[str, FileState]
    problems: list[ScanProblem]
    root_error: str | None = None
    remote: list[RemoteDocument] = field(default_factory=list)
    journal: list[JournalEntry] = field(default_factory=list)       # all rows this pass may resolve
    plan_journal: list[JournalEntry] = field(default_factory=list)  # the ones the planner needs
    restat: list[LocalFile] = field(default_factory=list)
    unreadable: int = 0
    adopted: Adoptions = field(default_factory=Adoptions)  # certain while listing (adoptions.py)
    status_changes: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    fingerprint: marks.RemoteFingerprint | None = None
    digest: str | None = None
    mark_key: str | None = None
    scan: ScanResult | None = None  # the walk, until _load has made files and rows of it


class _Pass:
    """One pass over one folder, step by step; each step is a method below."""

    def __init__(self, env: Env, folder: FolderSettings, options: PassOptions, hooks: Hooks, *,
                 recall: bool = True) -> None:
        self.env, self.folder, self.options, self.hooks = env, folder, options, hooks
        self.recall = recall
        self.store = env.store
        self.key = folder.key
        self.root = Path(folder.path)
        self.policy = policy_for(env.settings, folder, options.max_delete)
        self.report = FolderReport(folder=self.key, dataset_id=folder.dataset_id or None)
        self.view: RemoteView | None = None
        self.walk_ahead: Walk | None = None  # a whole pass's walk, begun before the pass

    def run(self) -> None:
        dataset_id = self._dataset()
        self.report.dataset_id = dataset_id
        known = self.store.known_metadata(dataset_id) if dataset_id else None
        if known is not None and not known.supported:  # no metadata API there: own by the state DB alone
            self.policy = replace(self.policy, owner=None)
        self.view = RemoteView(self.env.client, dataset_id, self.policy.name_of) if dataset_id else None
        inputs = self._whole() if self.options.paths is None else self._targeted()
        if inputs is None:
            return  # a quiet pass: nothing changed on either side
        plan = self._plan(inputs)
        if self.options.dry_run or self.view is None:
            return
        self._apply(inputs, plan)
        self._record(inputs, plan)

    def _dataset(self) -> str | None:
        """The folder's dataset id. A dataset found by name is made when it does not exist
        yet, but not by a pass the root refuses, and not again after Dify lost the one
        difysync synced (``recall`` False: the remembered id answered "not found"), unless
        the user says so: a silent re-creation would upload everything into an empty new
        dataset."""
        folder, options = self.folder, self.options
        recreate = options.recreate_dataset or folder.recreate_dataset
        create = not options.dry_run and self.root.is_dir() and (self.recall or recreate)
        dataset_id = resolve_dataset(self.env.client, self.store, folder, create=create,
                                     remember=not options.dry_run, recall=self.recall)
        if dataset_id is None and not self.recall and not options.dry_run and self.root.is_dir():
            raise DatasetMissing(
                f"dataset {folder.dataset_name!r} was deleted in Dify (difysync had synced this folder into it): "
                f"nothing synced; run `difysync reconcile --recreate-dataset` (or set recreate_dataset = true "
                f"for the folder) to make it again and upload the folder")
        return dataset_id

    # --- seeing both sides ------------------------------------------------------------

    def _whole(self) -> _Inputs | None:
        """The whole folder and, unless a probe shows it unchanged, the whole dataset."""
        inputs = self._scan_or_quiet()
        if inputs is None:
            return None
        listed = self.view is not None and not inputs.root_error
        unchanged = self._load(inputs, listed)
        self._hash(inputs)
        inputs.journal = self.store.pending_journal(self.key)
        inputs.plan_journal = inputs.journal
        if listed:
            assert self.view is not None
            self.hooks.observer.phase(self.key, Phase.LISTING)
            listing = self.view.unsettled(inputs.files, inputs.rows, inputs.journal, self.policy, unchanged)
            inputs.remote, inputs.files, inputs.rows = listing.remote, listing.files, listing.rows
            inputs.adopted = listing.adopted
            inputs.status_changes, inputs.fingerprint = listing.status_changes, listing.fingerprint
            inputs.plan_journal = [e for e in inputs.journal if e.rel_path not in listing.settled_journaled]
            self.policy = replace(self.policy, settled_elsewhere=listing.settled)
            self.report.remote_check = RemoteCheck.LISTING
        return inputs

    def _load(self, inputs: _Inputs, listed: bool) -> Candidates | None:
        """The state rows beside the walk. Before a listing, the plain rows of unchanged
        files stay columns (candidates.py) and only the other files become LocalFiles;
        without one, every file and row is an object for the planner."""
        scan, inputs.scan = inputs.scan, None
        assert scan is not None
        if not listed:
            inputs.files = scan.files
            inputs.rows = self.store.load_folder(self.key, seen={f.rel_path: f for f in inputs.files})
            return None
        from .candidates import Candidates  # (a quiet pass never loads the state: it starts without it)

        unchanged = Candidates(scan.found, self.policy)
        inputs.rows = self.store.load_folder(self.key, unchanged=unchanged)
        inputs.files = unchanged.others()
        return unchanged

    def _targeted(self) -> _Inputs:
        """Only the given paths (and what lies below them), looked up by name remotely."""
        wanted = sorted(set(self.options.paths or ()))
        files, problems, _gone = stat_paths(self.root, wanted, self.folder.include, self.folder.exclude)
        inputs = _Inputs(files, self.store.load_paths(self.key, wanted), problems,
                         root_error=None if self.root.is_dir() else f"folder root {self.root} is missing")
        self.policy = replace(self.policy, whole_folder=False)
        self._hash(inputs)
        # A targeted pass plans, and so may resolve, only the journal rows of its own paths.
        inputs.journal = [e for e in self.store.pending_journal(self.key) if _under_any(e.rel_path, set(wanted))]
        inputs.plan_journal = inputs.journal
        if self.view is not None and not inputs.root_error:
            inputs.remote = self.view.for_paths(inputs.rows, inputs.files)
            self.report.remote_check = RemoteCheck.NAMES
        return inputs

    def _scan_or_quiet(self) -> _Inputs | None:
        """Scan the folder; with a usable mark, probe the dataset meanwhile (a few round
        trips that cost nothing next to the walk). None when both still match the mark."""
        dataset_id = self.report.dataset_id
        mark_key = marks.policy_key(self.policy, dataset_id, self.folder.include, self.folder.exclude) \
            if dataset_id else None
        candidate = self._usable_mark(mark_key)
        self.hooks.observer.phase(self.key, Phase.SCANNING)
        # The walk's helpers are forked before the probe's thread starts (see walkshare).
        walk = self.walk_ahead or begin_scan(self.root, self.folder.include, self.folder.exclude,
                                             helpers=self.env.walk_helpers, standing=self.env.standing_helpers)
        self.walk_ahead = None  # (taken: a second attempt walks afresh)
        with walk, ThreadPoolExecutor(max_workers=1, thread_name_prefix="difysync-probe") as pool:
            probing = pool.submit(self.view.probe) if candidate is not None and self.view is not None else None
            scan = walk.result()
            self.hooks.observer.scanned(self.key, len(scan.found))
            digest = marks.scan_digest(scan.found, scan.problems) if dataset_id and not scan.root_error else None
            if candidate is None or probing is None:
                return self._inputs(scan, mark_key, digest)
            if digest != candidate.scan_digest:
                probing.cancel()
                return self._inputs(scan, mark_key, digest)
            if probing.result() != candidate.remote:
                log.debug("%s: the dataset changed since the last clean pass (or cannot be probed): listing it",
                          self.folder.label, extra=log_fields(folder=self.folder.label))
                return self._inputs(scan, mark_key, digest)
        self._report_quiet(candidate)
        return None

    @staticmethod
    def _inputs(scan: ScanResult, mark_key: str | None, digest: str | None) -> _Inputs:
        """What a pass that plans starts from; the walk's files become LocalFiles only in
        ``_load``, so a quiet pass never makes them."""
        return _Inputs([], {}, list(scan.problems), root_error=scan.root_error, mark_key=mark_key,
                       digest=digest, scan=scan)

    def _usable_mark(self, mark_key: str | None) -> marks.Mark | None:
        """The folder's mark, if it is recent, made under this configuration, and for a
        dataset big enough that probing beats listing; the scan still has to match it."""
        if mark_key is None or self.report.dataset_id is None:
            return None
        max_age = 0.0 if self.options.full_listing else self.env.settings.schedule.full_listing_minutes * 60
        body = self.store.load_mark(self.key, self.report.dataset_id)
        mark = marks.Mark.from_json(body) if body else None
        if mark is None or not mark.fresh(max_age) or not mark.worth_probing or mark.policy_key != mark_key:
            return None
        return mark

    def _report_quiet(self, mark: marks.Mark) -> None:
        self.report.remote_check = RemoteCheck.PROBE
        self.report.plan = Plan((), unchanged=mark.unchanged)
        self.report.repeated = mark.skips
        if self.hooks.on_plan is not None:
            self.hooks.on_plan(self.report.plan)

    def _hash(self, inputs: _Inputs) -> None:
        observer, key = self.hooks.observer, self.key
        observer.phase(key, Phase.HASHING)
        inputs.files, inputs.restat, unreadable, self.report.hashed = \
            with_hashes(inputs.files, inputs.rows, self.root, self.policy,
                        progress=lambda done, total, nbytes: observer.hashing(key, done, total, nbytes))
        inputs.problems.extend(unreadable)
        inputs.unreadable = len(unreadable)
        self.report.problems = inputs.problems

    # --- deciding ---------------------------------------------------------------------

    def _plan(self, inputs: _Inputs) -> Plan:
        policy = replace(self.policy, root_error=inputs.root_error) if inputs.root_error else self.policy
        # A problem on a folder (unreadable, say) means its contents are unknown, not
        # deleted: rows under it are kept out of the plan, so nothing there is deleted.
        problem_paths = {p.rel_path for p in inputs.problems}
        rows = inputs.rows if not problem_paths else \
            {rel: row for rel, row in inputs.rows.items() if not _under_any(rel, problem_paths)}
        plan = plan_folder(inputs.files, rows, inputs.remote, inputs.plan_journal, policy, inputs.adopted)
        if self.options.paths is not None:
            plan = _guard_targeted(plan, self.root, self.store.count_tracked(self.key), policy)
        if self.options.dry_run and self.chunking is not None:
            plan = self._with_segment_notes(plan)
        self.report.plan = plan
        if self.hooks.on_plan is not None:
            self.hooks.on_plan(plan)
        self.hooks.observer.planned(self.key, plan, upload_bytes(plan, inputs.files))
        self.report.errors.extend(plan.errors)
        for warning in plan.warnings:
            log.warning("%s: %s", self.folder.label, warning, extra=log_fields(folder=self.folder.label))
        return plan

    @property
    def chunking(self) -> LocalChunking | None:
        folder = self.folder
        if folder.chunking != "local":
            return None
        from .segsync import LocalChunking  # (a pass that sends nothing never loads what sends)

        return LocalChunking(frozenset(folder.local_chunk_types), folder.chunk_max_tokens)

    def _with_segment_notes(self, plan: Plan) -> Plan:
        """A dry run says what each edit of a locally chunked file would send ("update 1
        segment"), judged from the records alone."""
        from .segsync import edit_note

        chunking = self.chunking
        assert chunking is not None
        actions = []
        for a in plan.actions:
            if a.kind is Kind.UPDATE and a.document_id and chunking.applies(a.rel_path) and not a.renames:
                a = replace(a, segments=edit_note(chunking, self.root / a.rel_path, a.rel_path,
                                                  self.store.segments(a.document_id)))
            actions.append(a)
        return replace(plan, actions=tuple(actions))

    # --- acting and recording ---------------------------------------------------------

    def _apply(self, inputs: _Inputs, plan: Plan) -> None:
        # Loaded here: a quiet pass, which ends before this step, starts without it.
        from .apply import FolderContext, apply_actions, record_adoptions

        dataset_id = self.report.dataset_id or ""
        self._note_statuses(inputs)
        self.store.update_stats(self.key, inputs.restat)
        self.store.record_skips(self.key, dataset_id, [Skip(None, p.rel_path, p.reason, p.code)
                                                       for p in inputs.problems])
        ctx = FolderContext(key=self.key, root=self.root, dataset_id=dataset_id,
                            create_data=create_data(self.folder), update_data=update_data(self.folder),
                            max_bytes=self.policy.max_bytes, owner=self.policy.owner, chunking=self.chunking,
                            label=self.folder.label,
                            metadata_fields=lambda verify: metadata_fields(
                                self.env.client, self.store, self.key, dataset_id, verify=verify,
                                recheck_after=self.env.settings.schedule.full_listing_minutes * 60,
                                label=self.folder.label))
        local = {f.rel_path: f for f in inputs.files}
        observer, on_outcome = self.hooks.observer, self.hooks.on_outcome

        def done(outcome: Outcome) -> None:
            if on_outcome is not None:
                on_outcome(outcome)
            observer.outcome(self.key, outcome, sent_bytes(outcome, local))

        observer.phase(self.key, Phase.SYNCING)
        self.report.adopted = record_adoptions(plan.adopted, ctx, self.store)
        observer.adopted(self.key, self.report.adopted)
        self.report.outcomes = apply_actions(plan.actions, ctx, self.env.client, self.store, inputs.rows,
                                             concurrency=self.env.settings.dify.concurrency, local=local,
                                             on_outcome=done, should_stop=self.hooks.should_stop)

    def _note_statuses(self, inputs: _Inputs) -> None:
        """Indexing statuses the listing showed that the state does not have yet."""
        tracked = {row.document_id: row for row in inputs.rows.values() if row.document_id}
        inputs.status_changes.update({
            d.id: (d.indexing_status, d.error) for d in inputs.remote
            if d.id in tracked and (tracked[d.id].indexing_status != d.indexing_status
                                    or (d.indexing_status == "error" and not tracked[d.id].last_error))})
        self.store.refresh_statuses(self.key, inputs.status_changes)

    def _record(self, inputs: _Inputs, plan: Plan) -> None:
        outcomes = self.report.outcomes
        self.store.clear_journal(resolved_journal(inputs.journal, outcomes))
        adopted = {o.document_id for o in outcomes if o.action.kind is Kind.ADOPT and o.result is Result.OK}
        if adopted:  # so that the next pass finds them settled
            statuses = {d.id: (d.indexing_status, d.error) for d in inputs.remote if d.id in adopted}
            self.store.refresh_statuses(self.key, statuses)
        if inputs.digest is not None and inputs.mark_key is not None and inputs.fingerprint is not None \
                and not inputs.journal and not inputs.unreadable and self.report.ok and _changes_nothing(plan):
            mark = marks.Mark(inputs.mark_key, inputs.digest, inputs.fingerprint, plan.unchanged,
                              tuple(marks.SkipRow.of(a) for a in plan.actions if a.kind is Kind.SKIP), time.time())
            self.store.save_mark(self.key, self.report.dataset_id or "", mark.to_json())


def resolved_journal(journal: Sequence[JournalEntry], outcomes: Sequence[Outcome]) -> list[int]:
    """The journal rows a pass settled: of the rows it planned with, those whose path came
    through without a failure or a wait. A row stays while its path has an action that
    failed, was not attempted, has to wait or was not deleted because its file came back: it
    may be all that says a document is ours."""
    open_paths = {o.action.rel_path for o in outcomes
                  if o.result in (Result.FAILED, Result.WAITING, Result.STOPPED, Result.BACK)}
    return [e.id for e in journal if e.rel_path not in open_paths]


def create_data(folder: FolderSettings) -> dict[str, Any]:
    """The ``data`` field of a create-by-file for this folder."""
    return {"indexing_technique": folder.indexing_technique, "process_rule": dict(folder.process_rule)}


def update_data(folder: FolderSettings) -> dict[str, Any]:
    return {"process_rule": dict(folder.process_rule)}


def with_hashes(files: Sequence[LocalFile], rows: Mapping[str, FileState], root: Path, policy: Policy,
                progress: Callable[[int, int, int], None] | None = None,
                ) -> tuple[list[LocalFile], list[LocalFile], list[ScanProblem], int]:
    """Attach sha256 to each eligible file: the stored one when size, mtime and inode are
    unchanged, else a fresh streamed hash. Returns (files, restat, problems, hashed) where
    ``restat`` are synced files whose row needs its stat or skip note refreshed: the hash
    matched the store but the stat moved, or a skip recorded earlier no longer holds.
    ``progress(done, total, bytes)`` hears of each file hashed: the files to read are
    sorted out first, so their number is known without a second look at every file."""
    # Entries are replaced in place, so a big tree never holds two copies of its records.
    out = files if isinstance(files, list) else list(files)
    restat: list[LocalFile] = []
    todo = array("q")  # indices of the files to read
    for i, f in enumerate(out):
        if refusal(f.rel_path, f.size, policy):
            continue
        row = rows.get(f.rel_path)
        if row is not None and row.sha256 and row.size == f.size and row.mtime_ns == f.mtime_ns \
                and row.inode == f.inode:
            # Built from the row's own objects (equal values), so the scan's copies go.
            out[i] = LocalFile(row.rel_path, row.size, row.mtime_ns, row.inode, row.sha256)
            if row.skip_code is not None and row.skip_code.about_the_file and row.document_id:
                restat.append(out[i])  # readable (and unchanged) again: the old skip note goes
            continue
        todo.append(i)
    problems, hashed = _hash_files(out, todo, rows, root, restat, progress)
    return out, restat, problems, hashed


def _hash_files(out: list[LocalFile], todo: Sequence[int], rows: Mapping[str, FileState], root: Path,
                restat: list[LocalFile], progress: Callable[[int, int, int], None] | None,
                ) -> tuple[list[ScanProblem], int]:
    """Hash ``out[i]`` for each i in ``todo`` in place; an unreadable file leaves ``out``
    and becomes a problem. Returns (problems, files hashed)."""
    problems: list[ScanProblem] = []
    unreadable: list[int] = []
    hashed = nbytes = 0
    for i in todo:
        f = out[i]
        try:
            digest, _ = sha256_file(root / f.rel_path)
        except OSError as exc:
            problems.append(ScanProblem(f.rel_path, f"cannot read file: {exc.strerror or exc}"))
            unreadable.append(i)
            continue
        hashed += 1
        nbytes += f.size
        if progress is not None:
            progress(hashed, len(todo), nbytes)
        fresh = LocalFile(f.rel_path, f.size, f.mtime_ns, f.inode, digest)
        out[i] = fresh
        row = rows.get(f.rel_path)
        if row is not None and row.sha256 == digest and row.document_id:
            restat.append(fresh)
    for i in reversed(unreadable):
        del out[i]
    return problems, hashed


def upload_bytes(plan: Plan, files: Sequence[LocalFile]) -> int:
    """The file content the plan's uploads will send (what a progress bar counts down)."""
    sizes = {f.rel_path: f.size for f in files}
    return sum(sizes.get(a.rel_path, 0) for a in plan.actions if a.kind in UPLOADS)


def sent_bytes(outcome: Outcome, local: Mapping[str, LocalFile]) -> int:
    """The file content an action that ended sent: its file's size for an upload that
    went through, else nothing."""
    if outcome.result is not Result.OK or outcome.action.kind not in UPLOADS:
        return 0
    f = local.get(outcome.action.rel_path)
    return f.size if f is not None else 0


def _changes_nothing(plan: Plan) -> bool:
    """Only skips: the same inputs would give the same plan, with nothing to send."""
    return not plan.errors and not plan.warnings and not plan.adopted \
        and all(a.kind is Kind.SKIP for a in plan.actions)


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
    deletes = [a for a in plan.actions if a.kind is Kind.DELETE and not a.leftover]
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
        return plan
    kept = tuple(a for a in plan.actions if not (a.kind is Kind.DELETE and a in deletes))
    return replace(plan, actions=kept, errors=plan.errors + (reason,), held_back=plan.held_back + len(deletes))


def _has_entries(root: Path) -> bool:
    try:
        with os.scandir(root) as it:
            return any(True for _ in it)
    except OSError:
        return False


@dataclass
class RebuildReport:
    folder: str
    adopted: int = 0
    not_uploaded: int = 0
    foreign: int = 0
    error: str | None = None


def rebuild_state(env: Env) -> list[RebuildReport]:
    """Refill an empty state DB from the remote listing and the local tree, uploading
    nothing: every local file whose document name is in the dataset is linked to that
    document (with its hash when the sizes match, else marked for an update on the next
    pass); files not in Dify yet are left for the next reconcile."""
    out = []
    for folder in env.settings.folders:
        report = RebuildReport(folder=folder.key)
        out.append(report)
        try:
            _rebuild_folder(env, folder, report)
        except DifySyncError as exc:
            report.error = exc.describe()
    return out


def _rebuild_folder(env: Env, folder: FolderSettings, report: RebuildReport) -> None:
    dataset_id = resolve_dataset(env.client, env.store, folder, create=False)
    if not dataset_id:
        report.error = f"dataset {folder.dataset_name!r} does not exist yet"
        return
    scan = scan_tree(Path(folder.path), folder.include, folder.exclude)
    if scan.root_error:
        report.error = scan.root_error
        return
    policy = policy_for(env.settings, folder, None)
    files, _, _, _ = with_hashes(scan.files, {}, Path(folder.path), policy)
    remote = RemoteView(env.client, dataset_id).everything()
    plan = plan_folder(files, {}, remote, [], policy)
    by_path = {f.rel_path: f for f in files}
    linked = set()
    for a in plan.actions:
        if a.kind in (Kind.ADOPT, Kind.UPDATE, Kind.RECREATE, Kind.WAIT) and a.document_id:
            f = by_path[a.rel_path]
            exact = a.kind is Kind.ADOPT and a.sha256 is not None
            env.store.settle_upload(None, folder.key, dataset_id, a.rel_path, document_id=a.document_id,
                                    document_name=a.document_name or "", batch=None,
                                    sha256=a.sha256 if exact else None, size=f.size if exact else None,
                                    mtime_ns=f.mtime_ns if exact else None,
                                    inode=f.inode if exact else None, indexing_status=None)
            linked.add(a.document_id)
            report.adopted += 1
        elif a.kind is Kind.CREATE:
            report.not_uploaded += 1
    report.foreign = sum(1 for d in remote if d.id not in linked)


__all__ = ["Env", "Hooks", "PassOptions", "RebuildReport", "create_data", "folder_key", "policy_for",
           "rebuild_state", "reconcile", "reconcile_folder", "resolved_journal", "update_data", "with_hashes"]
