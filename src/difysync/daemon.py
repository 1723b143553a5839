"""`difysync run`: the long-running service. It decides *when* passes run and *which
paths* they look at; reconcile decides what to do.

One worker thread per folder (so one writer per dataset) runs every pass of that folder,
whether the watcher, the scheduler or start-up asked for it; requests coalesce while a
pass runs. Outages put a folder into backoff and are logged once per state change.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from .config import FolderSettings, Settings, load_api_key, load_settings
from .dify import DifyClient
from .errors import (AuthError, ConfigError, DatasetMissing, DifyError, DifySyncError, FatalError,
                     QuotaError, StateError, StateWriteError, TransientError)
from .logs import add_secret
from .notify import Notifier
from .plan import Plan
from .reconcile import FolderReport, folder_key, reconcile_folder
from .state import StateStore
from .watch import DirtyTracker, Watcher

log = logging.getLogger("difysync")

BACKOFF_START = 2.0
BACKOFF_MAX = 300.0


def client_for(settings: Settings) -> DifyClient:
    key = load_api_key(settings).get_secret_value()
    add_secret(key)
    return DifyClient.from_settings(settings.dify, key)


@dataclass
class WorkerStatus:
    pending_paths: int = 0
    in_flight: int = 0
    errors: int = 0
    backoff_until: float = 0.0
    last_full: float | None = None
    last_error: str | None = None


class FolderWorker(threading.Thread):
    """Runs every pass of one folder, one at a time, and owns its SQLite connection."""

    def __init__(self, daemon: Daemon, folder: FolderSettings) -> None:
        super().__init__(name=f"difysync-folder-{Path(folder.path).name}", daemon=True)
        self.d = daemon
        self.folder = folder
        self.key = folder_key(folder)
        self._cond = threading.Condition()
        self._full = False
        self._paths: set[str] = set()
        self._poll = False
        self._halt = False
        self._busy = False
        self.first_pass_done = threading.Event()
        self.status = WorkerStatus()
        self._failures = 0
        self._outage: str | None = None
        self._poll_interval = daemon.settings.schedule.status_poll_seconds
        self._next_poll = 0.0

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

    def request_poll(self) -> None:
        with self._cond:
            self._poll = True
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._halt = True
            self._cond.notify()

    @property
    def stopping(self) -> bool:
        return self._halt

    @property
    def idle(self) -> bool:
        with self._cond:
            return not (self._busy or self._full or self._paths)

    # --- the loop -------------------------------------------------------------------

    def run(self) -> None:
        try:
            store = StateStore(self.d.settings.state_db)
        except StateError as exc:
            log.error("%s: %s", self.key, exc)
            self.first_pass_done.set()
            self.d.fatal(exc)
            return
        try:
            while True:
                job = self._next_job()
                if job is None:
                    return
                kind, paths = job
                try:
                    if kind == "poll":
                        self._poll_statuses(store)
                    else:
                        self._pass(store, paths)
                except StateWriteError as exc:
                    self._enter_backoff(str(exc))
                    self.request_full()
                except StateError as exc:
                    log.error("%s: %s", self.key, exc)
                    self.d.fatal(exc)
                    return
                except Exception:  # noqa: BLE001 - a bug in one pass must not kill the service
                    log.exception("%s: unexpected error in a pass; a full pass will follow", self.key)
                    self._enter_backoff("internal error (see the traceback above)")
                finally:
                    with self._cond:
                        self._busy = False
        finally:
            store.close()

    def _next_job(self) -> tuple[str, list[str] | None] | None:
        with self._cond:
            while True:
                if self._halt:
                    return None
                now = time.monotonic()
                waiting = self.status.backoff_until - now
                if waiting > 0:
                    self._cond.wait(timeout=waiting)
                    continue
                if self._full:
                    self._full = False
                    self._paths.clear()
                    self._busy = True
                    self.status.pending_paths = 0
                    return "full", None
                if self._paths:
                    paths = sorted(self._paths)
                    self._paths.clear()
                    self._busy = True
                    self.status.pending_paths = 0
                    return "paths", paths
                if self._poll:
                    self._poll = False
                    if now >= self._next_poll:
                        self._busy = True
                        return "poll", None
                    continue
                self._cond.wait(timeout=1.0)

    def _pass(self, store: StateStore, paths: list[str] | None) -> None:
        kind = "full" if paths is None else f"{len(paths)} paths"
        log.debug("%s: %s pass", self.key, kind)
        report = reconcile_folder(self.d.settings, self.folder, self.d.client, store, paths=paths,
                                  on_plan=self._planned if paths is None else None,
                                  should_stop=lambda: self._halt)
        if paths is None:
            self.status.last_full = time.time()
            self.first_pass_done.set()
        self._after(report, store)

    def _planned(self, plan: Plan) -> None:
        self.first_pass_done.set()

    def _after(self, report: FolderReport, store: StateStore) -> None:
        fatal = report.fatal
        described = fatal.describe() if isinstance(fatal, DifyError) else str(fatal)
        for error in report.errors:
            if fatal is None or error != described:
                log.warning("%s: %s", self.key, error)
        if fatal is not None and _is_outage(fatal):
            self._enter_backoff(described)
            if not self._halt:
                self.request_full()  # catch up once the backoff is over
            return
        if fatal is not None:
            log.error("%s: %s", self.key, described)
        if self._outage is not None:
            log.info("%s: Dify answers again; caught up", self.key)
        self._outage = None
        self._failures = 0
        self.status.backoff_until = 0.0
        uploads = sum(1 for o in report.outcomes if o.result == "ok" and o.action.mutating)
        if uploads:
            self._poll_interval = self.d.settings.schedule.status_poll_seconds
            self._next_poll = 0.0
        self.d.refresh_status()

    def _enter_backoff(self, why: str) -> None:
        self._failures += 1
        pause = min(BACKOFF_MAX, BACKOFF_START * 2 ** (self._failures - 1))
        pause = random.uniform(pause * 0.8, pause)
        self.status.backoff_until = time.monotonic() + pause
        self.status.last_error = why
        if self._outage is None:
            log.warning("%s: %s; backing off (retry in %.0f s, then at most every %.0f s), "
                        "still watching", self.key, why, pause, BACKOFF_MAX)
        else:
            log.debug("%s: still failing (%s); next try in %.0f s", self.key, why, pause)
        self._outage = why
        self.d.refresh_status()

    def _poll_statuses(self, store: StateStore) -> None:
        """Indexing progress of in-flight documents only, via the listing (one request per
        hundred documents). The interval stretches while long jobs run."""
        in_flight = store.in_flight(self.key)
        if not in_flight:
            self._poll_interval = self.d.settings.schedule.status_poll_seconds
            self._next_poll = 0.0
            return
        dataset_id = self.folder.dataset_id or _dataset_of(store, self.key)
        if not dataset_id:
            return
        try:
            docs = {d.id: d for d in self.d.client.list_documents(dataset_id)}
        except DifyError as exc:
            if _is_outage(exc):
                self._enter_backoff(exc.describe())
            return
        ids = {doc_id for _, _, doc_id, _ in in_flight}
        store.refresh_statuses(self.key, {i: (docs[i].indexing_status, docs[i].error)
                                          for i in ids if i in docs})
        self._next_poll = time.monotonic() + self._poll_interval
        self._poll_interval = min(self._poll_interval * 1.5, self.d.settings.schedule.status_poll_max_seconds)
        self.d.refresh_status()


def _dataset_of(store: StateStore, key: str) -> str | None:
    row = store.db.execute("SELECT max(dataset_id) FROM files WHERE folder = ?", [key]).fetchone()
    return row[0] if row else None


def _is_outage(error: DifySyncError) -> bool:
    """Errors that mean "try the whole folder again later" rather than "this file"."""
    return isinstance(error, (TransientError, AuthError, QuotaError, DatasetMissing, FatalError,
                              StateWriteError))


class Daemon:
    """Watcher + scheduler + one worker per folder; the main thread handles signals."""

    def __init__(self, config_path: Path, settings: Settings, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.client: DifyClient = client_for(settings)
        self.workers: dict[str, FolderWorker] = {}
        self.trackers: dict[str, DirtyTracker] = {}
        self._tracker_lock = threading.Lock()
        self.watcher: Watcher | None = None
        self.scheduler: BackgroundScheduler | None = None
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._ready_sent = False
        self._fatal: BaseException | None = None
        self._watch_failed = False
        self._status_text = ""

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        for folder in s.folders:
            key = folder_key(folder)
            self.trackers[key] = DirtyTracker(s.watch.debounce_seconds, s.watch.delete_delay_seconds,
                                              s.watch.max_delay_seconds)
            worker = FolderWorker(self, folder)
            self.workers[key] = worker
            worker.request_full()
            worker.start()
        self._start_watcher()
        self._start_scheduler()
        log.info("difysync %s running: %d folder(s), full pass every %s, config %s",
                 _version(), len(s.folders), _duration(s.schedule.full_reconcile_minutes * 60),
                 self.config_path)

    def _start_watcher(self) -> None:
        s = self.settings
        watcher = Watcher(on_event=self._on_event, on_error=self._on_watch_error,
                          ignore_paths={Path(s.state_db)})
        for folder in s.folders:
            mode = folder.effective_watch_mode(s)
            if mode == "off":
                continue
            watcher.add_folder(folder_key(folder), Path(folder.path), mode=mode, include=folder.include,
                               exclude=folder.exclude, poll_interval=s.watch.poll_interval_seconds)
        watcher.start()
        for folder in s.folders:
            key = folder_key(folder)
            try:
                log.info("%s: watching (%s) -> dataset %s", key, watcher.mode_of(key),
                         folder.dataset_id or repr(folder.dataset_name))
            except KeyError:
                log.info("%s: not watched (periodic full passes only)", key)
        self.watcher = watcher

    def _start_scheduler(self) -> None:
        s = self.settings
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                      "misfire_grace_time": 60})
        interval = s.schedule.full_reconcile_minutes * 60
        for key, worker in self.workers.items():
            scheduler.add_job(worker.request_full, "interval", seconds=interval,
                              jitter=max(1, int(interval * 0.25)) if interval >= 4 else None,
                              id=f"full:{key}", name=f"full reconcile of {key}")
        scheduler.add_job(self._poll_all, "interval", seconds=s.schedule.status_poll_seconds,
                          id="poll", name="indexing status poll")
        scheduler.add_job(self._health_check, "interval", seconds=5, id="health", name="health")
        scheduler.start()
        self.scheduler = scheduler

    def _poll_all(self) -> None:
        for worker in self.workers.values():
            worker.request_poll()

    def _health_check(self) -> None:
        """watchdog's emitter threads can die quietly (and inotify overflows are dropped):
        restart the watcher and fall back on a full pass."""
        if self.watcher is not None and not self.watcher.is_alive() and not self._stop_requested:
            self._watch_failed = True
            self._wake.set()
        self.refresh_status()

    def run_forever(self) -> int:
        """Main-thread loop: signals, debounced paths, readiness, watchdog pings."""
        self._install_signals()
        self.start()
        ping = self.notifier.watchdog_interval()
        next_ping = 0.0
        while True:
            if self._fatal is not None:
                self.shutdown()
                return 78
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
            now = time.monotonic()
            if ping is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + ping
            timeout = self._dispatch_due()
            if ping is not None:
                timeout = min(timeout, max(0.05, next_ping - time.monotonic()))
            self._wake.wait(timeout=timeout)
            self._wake.clear()

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
        log.warning("%s: watcher reported %s; a full pass follows", key, error)
        worker = self.workers.get(key)
        if worker is not None:
            worker.request_full()

    def _restart_watcher(self) -> None:
        log.warning("the file watcher stopped; restarting it, and a full pass follows")
        if self.watcher is not None:
            try:
                self.watcher.stop(timeout=2)
            except Exception:  # noqa: BLE001 - it is already broken
                pass
        self._start_watcher()
        for worker in self.workers.values():
            worker.request_full()

    # --- status -----------------------------------------------------------------------

    def refresh_status(self) -> None:
        pending = sum(w.status.pending_paths for w in self.workers.values())
        with self._tracker_lock:
            pending += sum(t.pending() for t in self.trackers.values())
        try:
            with StateStore(self.settings.state_db, readonly=True) as store:
                summaries = store.summaries()
                in_flight = sum(s.pending + s.indexing for s in summaries)
                errors = sum(s.error for s in summaries)
        except StateError:
            in_flight, errors = 0, 0
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
        self.settings, self.client = settings, client
        self.workers, self.trackers = {}, {}
        self.start()
        self._ready_sent = False

    def _stop_parts(self, timeout: float) -> bool:
        if self.watcher is not None:
            self.watcher.stop(timeout=2)
            self.watcher = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
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
        self.client.close()
        log.info("stopped")


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


__all__ = ["Daemon", "FolderWorker", "run_daemon"]
