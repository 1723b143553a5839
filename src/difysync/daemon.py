"""`difysync run`: the long-running service. It decides *when* passes run and *which
paths* they look at; reconcile decides what to do.

One worker thread per folder (so one writer per dataset in this process) runs every pass
and every indexing poll of that folder, whether the watcher, its own timers or start-up
asked for it; requests coalesce while a pass runs. Each worker keeps its own deadlines
(next full pass, next poll, end of a backoff) on an injected clock, and the main thread
keeps the watcher's debounce deadlines and the health checks: nothing else decides when
things happen. Across processes, the service holds each folder for its whole life and
takes the folder's write lease for each pass (lease.py). Outages put a folder into
backoff and are logged once per state change.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import FrameType

from .backoff import Backoff, outage_wait, poll_wait
from .config import FolderSettings, MetricsSettings, Settings, load_api_key, load_settings
from .dify import DifyClient
from .errors import EX_CONFIG, EX_TEMPFAIL, ConfigError, DifyError, LeaseBusy, StateError, verdict
from .events import NOBODY, Fanout, Observer, Phase
from .lease import FolderLocks, Holder
from .logs import add_secret, log_fields
from .metrics import Board, LiveFolder, Metrics, ServiceFacts, WatcherState
from .notify import Notifier
from .outcomes import Result
from .reconcile import Env, Hooks, PassOptions, reconcile_folder
from .remote import SETTLED, IndexingPoller, poll_folder
from .report import FolderReport
from .state import StateBackend, StateStore
from .walkshare import StandingHelpers
from .watch import DirtyTracker, Watcher
from .web import StatusServer

log = logging.getLogger("difysync")

HEALTH_CHECK_SECONDS = 5.0
WHO = "difysync run"


def client_for(settings: Settings) -> DifyClient:
    key = load_api_key(settings).get_secret_value()
    add_secret(key)
    return DifyClient.from_settings(settings.dify, key)


class Job(str, Enum):
    FULL = "full"    # a whole pass
    PATHS = "paths"  # a targeted pass over the paths the watcher reported
    POLL = "poll"    # the indexing status of what is in flight


@dataclass
class WorkerStatus:
    pending_paths: int = 0
    backoff_until: float = 0.0
    last_error: str | None = None


class FolderWorker(threading.Thread):
    """Runs every pass and poll of one folder, one at a time, and owns its state connection.

    Its timing is data: ``due()`` says which job is due at the clock's current time and
    ``step()`` runs it, so tests drive a worker with a fake clock and no thread at all."""

    def __init__(self, folder: FolderSettings, settings: Settings, client: DifyClient, *,
                 open_store: Callable[[], StateBackend], poller: IndexingPoller,
                 clock: Callable[[], float] = time.monotonic,
                 on_update: Callable[[], None] = lambda: None,
                 on_fatal: Callable[[BaseException], None] = lambda e: None,
                 observer: Observer = NOBODY,
                 on_problem: Callable[[str, str], None] = lambda key, why: None,
                 walk_helpers: StandingHelpers | None = None) -> None:
        super().__init__(name=f"difysync-folder-{Path(folder.path).name}", daemon=True)
        self.walk_helpers = walk_helpers  # lent to its whole passes' walks, when free
        self.folder, self.settings, self.client, self.poller = folder, settings, client, poller
        self.key = folder.key
        self._open_store, self._clock = open_store, clock
        self._on_update, self._on_fatal = on_update, on_fatal
        self.observer, self._on_problem = observer, on_problem  # metrics and the status page
        self._store: StateBackend | None = None
        self._cond = threading.Condition()
        self._full = False
        self._paths: set[str] = set()
        self._halt = False
        self.first_pass_done = threading.Event()
        self.status = WorkerStatus()
        self._outage: str | None = None
        self._outages = Backoff(outage_wait())
        self._polls = Backoff(poll_wait(settings.schedule.status_poll_seconds,
                                        settings.schedule.status_poll_max_seconds))
        self._next_full = math.inf
        self._next_poll = clock() + settings.schedule.status_poll_seconds  # in flight from before?

    # --- requests from other threads ------------------------------------------------

    def request_full(self) -> None:
        with self._cond:
            self._full = True
            self._cond.notify()

    def request_paths(self, paths: list[str]) -> None:
        if not paths:
            return
        with self._cond:
            self._paths.update(paths)
            self.status.pending_paths = len(self._paths)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._halt = True
            self._cond.notify()

    @property
    def stopping(self) -> bool:
        return self._halt

    # --- timing -------------------------------------------------------------------------

    def due(self) -> tuple[Job, list[str] | None] | None:
        """The job to run now, taken off the queue; None while nothing is due."""
        with self._cond:
            now = self._clock()
            if self._halt or self.status.backoff_until > now:
                return None
            if self._full or now >= self._next_full:
                self._full = False
                self._paths.clear()
                self.status.pending_paths = 0
                return Job.FULL, None
            if self._paths:
                paths = sorted(self._paths)
                self._paths.clear()
                self.status.pending_paths = 0
                return Job.PATHS, paths
            if now >= self._next_poll:
                self._next_poll = math.inf  # until the poll says when to look again
                return Job.POLL, None
            return None

    def seconds_to_next(self) -> float:
        """How long nothing is due (for the thread's wait; a request wakes it earlier)."""
        with self._cond:
            now = self._clock()
            if self.status.backoff_until > now:
                return self.status.backoff_until - now
            return max(0.0, min(self._next_full, self._next_poll) - now)

    # --- the loop -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._store = self._open_store()
        except StateError as exc:
            log.error("%s: %s", self.folder.label, exc, extra=log_fields(folder=self.folder.label))
            self.first_pass_done.set()
            self._on_fatal(exc)
            return
        try:
            while not self._halt:
                if self.step() is None:
                    with self._cond:
                        if not (self._halt or self._full or self._paths):
                            self._cond.wait(timeout=min(60.0, self.seconds_to_next()))
        finally:
            self._store.close()

    def step(self) -> Job | None:
        """Run the job that is due now, if any; returns what ran."""
        job = self.due()
        if job is None:
            return None
        kind, paths = job
        try:
            if kind is Job.POLL:
                self._poll()
            else:
                self._pass(paths)
        except StateError as exc:
            if verdict(exc).backs_off and not verdict(exc).stops_run:  # disk full: try again later
                self._enter_backoff(str(exc))
                self.request_full()
            else:
                log.error("%s: %s", self.folder.label, exc, extra=log_fields(folder=self.folder.label))
                self._on_fatal(exc)
                self._halt = True
        except Exception:  # noqa: BLE001 - a bug in one pass must not kill the service
            log.exception("%s: unexpected error in a pass; a full pass will follow", self.folder.label,
                          extra=log_fields(folder=self.folder.label))
            self._enter_backoff("internal error (see the traceback above)")
            self.request_full()
        return kind

    @property
    def store(self) -> StateBackend:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _pass(self, paths: list[str] | None) -> None:
        log.debug("%s: %s pass", self.folder.label, "full" if paths is None else f"{len(paths)} paths",
                  extra=log_fields(folder=self.folder.label))
        env = Env(self.settings, self.client, self.store, who=WHO, standing_helpers=self.walk_helpers)
        options = PassOptions(paths=tuple(paths) if paths is not None else None, lock_timeout=None)
        hooks = Hooks(on_plan=(lambda _plan: self.first_pass_done.set()) if paths is None else None,
                      should_stop=lambda: self._halt, on_lease_wait=self._waiting_for_lease,
                      observer=self.observer)
        report = reconcile_folder(env, self.folder, options, hooks)
        if paths is None:
            self.first_pass_done.set()
            self._schedule_full()
        self._after(report)

    def _waiting_for_lease(self, holder: Holder | None) -> None:
        who = holder.describe() if holder is not None else "another process"
        log.info("%s: waiting for the write lease, held by %s", self.folder.label, who,
                 extra=log_fields(folder=self.folder.label))

    def _schedule_full(self) -> None:
        interval = self.settings.schedule.full_reconcile_minutes * 60
        jitter = random.uniform(0, interval * 0.25) if interval >= 4 else 0.0  # spread many folders
        with self._cond:
            self._next_full = self._clock() + interval + jitter

    def _after(self, report: FolderReport) -> None:
        fatal = report.fatal
        described = fatal.describe() if fatal is not None else ""
        for error in report.errors:
            if fatal is None or error != described:
                log.warning("%s: %s", self.folder.label, error, extra=log_fields(folder=self.folder.label))
        if fatal is not None and self._halt:
            return  # stopping: an abandoned wait or a cut-short pass is not news
        if fatal is not None and verdict(fatal).exit_code == EX_CONFIG:
            # an unusable state DB: systemd must not loop on it
            log.error("%s: %s", self.folder.label, described, extra=log_fields(folder=self.folder.label))
            self._on_fatal(fatal)
            self._halt = True
            return
        if fatal is not None and verdict(fatal).backs_off:
            self._enter_backoff(described)
            self.request_full()  # catch up once the backoff is over
            return
        if fatal is not None:
            self._on_problem(self.key, described)
        self._outage_over("Dify answers again; caught up")
        # a file that came back while its delete waited is looked at again, event or not
        self.request_paths([o.action.rel_path for o in report.outcomes if o.result is Result.BACK])
        if any(o.action.mutating and o.document_id for o in report.outcomes):
            self._polls.reset()
            with self._cond:
                self._next_poll = self._clock() + self._polls.next_delay()
        self._on_update()

    def _outage_over(self, news: str) -> None:
        if self._outage is not None:
            log.info("%s: %s", self.folder.label, news, extra=log_fields(folder=self.folder.label))
        self._outage = None
        self._outages.reset()
        self.status.backoff_until = 0.0

    def _enter_backoff(self, why: str) -> None:
        pause = self._outages.next_delay()
        self.status.backoff_until = self._clock() + pause
        self.status.last_error = why
        self.observer.phase(self.key, Phase.BACKING_OFF)
        self._on_problem(self.key, why)
        if self._outage is None:
            log.warning("%s: %s; backing off (retry in %.0f s, then less and less often), still watching",
                        self.folder.label, why, pause, extra=log_fields(folder=self.folder.label))
        else:
            log.debug("%s: still failing (%s); next try in %.0f s", self.folder.label, why, pause,
                      extra=log_fields(folder=self.folder.label))
        self._outage = why
        self._on_update()

    def _poll(self) -> None:
        """Indexing progress of the documents in flight (remote.py's poller); the interval
        stretches while long jobs run, and polling stops when nothing is in flight."""
        dataset_id = self.folder.dataset_id or self.store.known_dataset(self.key, self.folder.dataset_name) \
            or self.store.dataset_of(self.key)
        if not dataset_id:
            return
        try:
            found = poll_folder(self.poller, self.store, self.key, dataset_id)
        except DifyError as exc:
            if verdict(exc).backs_off:
                self._enter_backoff(exc.describe())
            self._poll_again()
            return
        if self._outage is not None:  # the poll's own outage (a failed pass is retried by a full pass first)
            self._outage_over("Dify answers again")
            self.observer.phase(self.key, Phase.IDLE)
        if any(status not in SETTLED and status != "gone" for status, _ in found.values()):
            self._poll_again()
        self._on_update()

    def _poll_again(self) -> None:
        with self._cond:
            self._next_poll = self._clock() + self._polls.next_delay()


class Daemon:
    """Watcher + one worker per folder; the main thread handles signals and deadlines."""

    def __init__(self, config_path: Path, settings: Settings, notifier: Notifier | None = None,
                 walk_helpers: StandingHelpers | None = None) -> None:
        self.config_path = config_path
        self.walk_helpers = walk_helpers
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.observer = Fanout([self.metrics])  # a failing observer never fails a pass
        self.client: DifyClient = client_for(settings)
        self.client.observer = self.observer
        self.poller = IndexingPoller(self.client)
        self.started_at = time.time()
        self.board = Board(self.metrics, self.facts)
        self.web: StatusServer | None = None
        self.workers: dict[str, FolderWorker] = {}
        self.trackers: dict[str, DirtyTracker] = {}
        self.holds: dict[str, FolderLocks] = {}
        self._tracker_lock = threading.Lock()
        self.watcher: Watcher | None = None
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._ready_sent = False
        self._db_counts: tuple[int, int] | None = None  # (in flight, errors) at the last refresh from the DB
        self._fatal: BaseException | None = None
        self._watch_failed = False
        self._status_text = ""

    # --- life cycle -----------------------------------------------------------------

    def start(self, *, reloading: bool = False) -> None:
        """Open the metrics endpoint (ConfigError when its port is taken), hold every
        folder (LeaseBusy when another service has one), then start a worker per folder
        and the watcher."""
        s = self.settings
        if not reloading:
            self.web = _open_web(self.board, s.metrics)
        self._take_holds(s.folders, strict=not reloading)
        for folder in s.folders:
            if folder.key not in self.holds:
                continue
            self.trackers[folder.key] = DirtyTracker(s.watch.debounce_seconds, s.watch.delete_delay_seconds,
                                                     s.watch.max_delay_seconds)
            worker = FolderWorker(folder, s, self.client, open_store=lambda: StateStore(s.state_db),
                                  poller=self.poller, on_update=self.refresh_status, on_fatal=self.fatal,
                                  observer=self.observer, on_problem=self.metrics.folder_error,
                                  walk_helpers=self.walk_helpers)
            self.workers[folder.key] = worker
            worker.request_full()
            worker.start()
        self.metrics.track(list(self.workers))
        self._start_watcher()
        log.info("difysync %s running: %d folder(s), full pass every %s, config %s",
                 _version(), len(self.workers), _duration(s.schedule.full_reconcile_minutes * 60),
                 self.config_path)

    def _take_holds(self, folders: list[FolderSettings], *, strict: bool) -> None:
        """Hold the configured folders against other services and release the others.
        At start-up (``strict``) a busy folder stops the service; on a reload it is left out."""
        wanted = {f.key for f in folders}
        for key in [k for k in self.holds if k not in wanted]:
            self.holds.pop(key).release_hold()
        Path(self.settings.state_db).parent.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            if folder.key in self.holds:
                continue
            locks = FolderLocks(Path(self.settings.state_db), folder.key, what=WHO)
            try:
                locks.hold()
            except LeaseBusy as exc:
                if strict:
                    self._release_holds()
                    raise
                log.error("%s; not syncing it", exc)
                continue
            self.holds[folder.key] = locks

    def _release_holds(self) -> None:
        for locks in self.holds.values():
            locks.release_hold()
        self.holds = {}

    def _start_watcher(self) -> None:
        s = self.settings
        watcher = Watcher(on_event=self._on_event, on_error=self._on_watch_error,
                          ignore_paths={Path(s.state_db)})
        for folder in s.folders:
            mode = folder.effective_watch_mode(s)
            if mode == "off" or folder.key not in self.workers:
                continue
            watcher.add_folder(folder.key, Path(folder.path), mode=mode, include=folder.include,
                               exclude=folder.exclude, poll_interval=s.watch.poll_interval_seconds,
                               label=folder.label)
        watcher.start()
        for folder in s.folders:
            try:
                log.info("%s: watching %s (%s) -> dataset %s", folder.label, folder.key,
                         watcher.mode_of(folder.key), folder.dataset_id or repr(folder.dataset_name),
                         extra=log_fields(folder=folder.label))
            except KeyError:
                log.info("%s: %s not watched (periodic full passes only)", folder.label, folder.key,
                         extra=log_fields(folder=folder.label))
        self.watcher = watcher
        self.metrics.watcher_state(WatcherState.RUNNING)

    def _health_check(self) -> None:
        """watchdog's emitter threads can die quietly (and inotify overflows are dropped):
        restart the watcher and fall back on a full pass."""
        if self.watcher is not None and not self.watcher.is_alive() and not self._stop_requested:
            self._watch_failed = True
            self._wake.set()
        self.refresh_status(from_db=False)

    def run_forever(self) -> int:
        """Main-thread loop: signals, debounced paths, readiness, health, watchdog pings."""
        self._install_signals()
        try:
            self.start()
        except (LeaseBusy, ConfigError) as exc:
            log.error("%s", exc)
            self._close_web()
            self.client.close()
            return EX_CONFIG if isinstance(exc, ConfigError) else EX_TEMPFAIL
        clock = _MainClock(self.notifier.watchdog_interval())
        while True:
            code = self._between_waits(clock)
            if code is not None:
                return code
            self._wake.wait(timeout=min(self._dispatch_due(), clock.seconds_to_next()))
            self._wake.clear()

    def _between_waits(self, clock: _MainClock) -> int | None:
        """One turn of the main loop's bookkeeping; an exit code when it is time to go."""
        if self._fatal is not None:
            self.shutdown()
            return EX_CONFIG
        if self._stop_requested:
            self.shutdown()
            return 0
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        if self._watch_failed:
            self._watch_failed = False
            self._restart_watcher()
        if not self._ready_sent and all(w.first_pass_done.is_set() for w in self.workers.values()):
            self._ready_sent = True
            self.refresh_status()
            self.notifier.ready(self._status_text)
            log.info("ready: first full pass planned for every folder")
        if clock.ping_due():
            self.notifier.watchdog()
        if clock.health_due():
            self._health_check()
        return None

    def _dispatch_due(self) -> float:
        """Hand the paths whose debounce expired to their workers; return how long the
        main loop may sleep before the next one is due."""
        next_due = math.inf
        with self._tracker_lock:
            for key, tracker in self.trackers.items():
                work = tracker.due()
                worker = self.workers.get(key)
                if worker is not None:
                    if work.full_rescan:
                        worker.request_full()
                    elif work.paths:
                        worker.request_paths(work.paths)
                deadline = tracker.next_deadline()
                if deadline is not None:
                    next_due = min(next_due, deadline)
        if next_due is math.inf:
            return 1.0
        return max(0.02, min(1.0, next_due - time.monotonic()))

    # --- watcher callbacks (watcher threads) ------------------------------------------

    def _on_event(self, key: str, rel_path: str, kind: str, dest: str | None = None) -> None:
        with self._tracker_lock:
            tracker = self.trackers.get(key)
            if tracker is None:
                return
            tracker.note(rel_path, kind, dest)  # type: ignore[arg-type]
        self._wake.set()

    def _on_watch_error(self, key: str, error: BaseException) -> None:
        """Events may have been lost: a full pass, once the folder has been quiet for the
        debounce (an inotify overflow comes in the middle of a storm, and a walk of a tree
        still being rewritten sees files a checkout has unlinked and not yet written back)."""
        self.metrics.watch_error(key, error)
        worker = self.workers.get(key)
        label = worker.folder.label if worker is not None else key
        log.warning("%s: watcher reported %s; a full pass follows once the folder is quiet", label, error,
                    extra=log_fields(folder=label))
        with self._tracker_lock:
            tracker = self.trackers.get(key)
            if tracker is not None:
                tracker.request_full_rescan()
        if tracker is None and worker is not None:
            worker.request_full()
        self._wake.set()

    def _restart_watcher(self) -> None:
        log.warning("the file watcher stopped; restarting it, and a full pass follows")
        self.metrics.watcher_state(WatcherState.RESTARTING)
        if self.watcher is not None:
            try:
                self.watcher.stop(timeout=2)
            except Exception:  # noqa: BLE001 - it is already broken
                pass
        self._start_watcher()
        for worker in self.workers.values():
            worker.request_full()

    # --- status -----------------------------------------------------------------------

    def refresh_status(self, *, from_db: bool = True) -> None:
        """The STATUS line systemd shows. ``from_db`` False (the 5 s health tick) re-counts
        only what lives in memory (dirty paths, backoff) and keeps the state DB's counts
        from the last pass or poll: counting them scans every file row, which at rest made
        a 100k-file service use 7 % of a core."""
        pending = sum(w.status.pending_paths for w in self.workers.values())
        with self._tracker_lock:
            pending += sum(t.pending() for t in self.trackers.values())
        if from_db or self._db_counts is None:
            try:
                with StateStore(self.settings.state_db, readonly=True) as store:
                    summaries = store.summaries()
                    self._db_counts = (sum(s.pending + s.indexing for s in summaries),
                                       sum(s.error for s in summaries))
            except StateError:
                self._db_counts = (0, 0)
        in_flight, errors = self._db_counts
        backing_off = [w for w in self.workers.values() if w.status.backoff_until > time.monotonic()]
        text = (f"watching {len(self.workers)} folder{'s' if len(self.workers) != 1 else ''}, "
                f"{pending + in_flight} pending, {errors} errors")
        if backing_off:
            text += f", {len(backing_off)} in backoff ({backing_off[0].status.last_error})"
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    # --- signals, reload, shutdown --------------------------------------------------

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_requested:
            # Second signal: leave now. Unsettled journal rows are resolved next start.
            os.write(2, b"difysync: second signal, exiting at once\n")
            os._exit(130)
        self._stop_requested = True
        self._wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True
        self._wake.set()

    def fatal(self, error: BaseException) -> None:
        self._fatal = error
        self._wake.set()

    def reload(self) -> None:
        try:
            settings = load_settings(self.config_path)
            client = client_for(settings)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload failed: %s", problem)
            log.error("keeping the previous configuration")
            return
        self.notifier.reloading()
        log.info("reloading the configuration from %s", self.config_path)
        self._stop_parts(self.settings.shutdown_timeout_seconds)
        self.client.close()
        listen_before = self.settings.metrics.listen
        self.settings, self.client = settings, client
        client.observer = self.observer
        self.poller = IndexingPoller(client)
        self.workers, self.trackers = {}, {}
        self.start(reloading=True)
        self._ready_sent = False
        if settings.metrics.listen != listen_before:
            self._reopen_web(listen_before)

    def _stop_parts(self, timeout: float) -> bool:
        if self.watcher is not None:
            self.watcher.stop(timeout=2)
            self.watcher = None
            self.metrics.watcher_state(WatcherState.STOPPED)
        for worker in self.workers.values():
            worker.stop()
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in self.workers.values())

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping: letting requests in flight finish (at most %.0f s)",
                 self.settings.shutdown_timeout_seconds)
        clean = self._stop_parts(self.settings.shutdown_timeout_seconds)
        if not clean:
            log.warning("stopped with requests still in flight; the journal resolves them at next start")
        self._release_holds()
        self.client.close()
        self._close_web()
        log.info("stopped")

    # --- metrics, /healthz and the status page ------------------------------------------

    def facts(self) -> ServiceFacts:
        """What only the service knows, for the board (called from the web server's threads)."""
        now = time.monotonic()
        folders = []
        for key, w in list(self.workers.items()):
            with self._tracker_lock:
                tracker = self.trackers.get(key)
                dirty = w.status.pending_paths + (tracker.pending() if tracker is not None else 0)
            in_outage = w.status.backoff_until > 0  # reset when a pass or poll gets through
            folders.append(LiveFolder(key, w.folder.dataset_name or w.folder.dataset_id,
                                      outage=w.status.last_error if in_outage else None,
                                      retry_in=max(0.0, w.status.backoff_until - now), dirty=dirty))
        return ServiceFacts(tuple(folders), Path(self.settings.state_db),
                            self.settings.schedule.full_reconcile_minutes * 60, self.started_at)

    def _reopen_web(self, listen_before: str) -> None:
        """metrics.listen changed on a reload: serve on the new address, or, when it cannot
        be had, say so and keep (or take back) the old one."""
        self._close_web()
        try:
            self.web = _open_web(self.board, self.settings.metrics)
        except ConfigError as exc:
            log.error("%s; keeping %s", exc, listen_before or "the endpoint off")
            try:
                self.web = _open_web(self.board, MetricsSettings(listen=listen_before))
            except ConfigError as again:
                log.error("%s", again)

    def _close_web(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None


class _MainClock:
    """The main loop's own deadlines: systemd watchdog pings and health checks."""

    def __init__(self, ping_every: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ping_every = ping_every
        self._next_ping = clock() if ping_every is not None else math.inf
        self._next_health = clock() + HEALTH_CHECK_SECONDS

    def ping_due(self) -> bool:
        if self._ping_every is None or self._clock() < self._next_ping:
            return False
        self._next_ping = self._clock() + self._ping_every
        return True

    def health_due(self) -> bool:
        if self._clock() < self._next_health:
            return False
        self._next_health = self._clock() + HEALTH_CHECK_SECONDS
        return True

    def seconds_to_next(self) -> float:
        return max(0.05, min(self._next_ping, self._next_health) - self._clock())


def _open_web(board: Board, metrics: MetricsSettings) -> StatusServer | None:
    address = metrics.address
    return StatusServer(board, *address).start() if address is not None else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    return f"{seconds / 60:g} min"


def _version() -> str:
    from . import __version__

    return __version__


def run_daemon(config_path: Path, settings: Settings) -> int:
    daemon = Daemon(config_path, settings)
    return daemon.run_forever()


__all__ = ["Daemon", "FolderWorker", "Job", "run_daemon"]
