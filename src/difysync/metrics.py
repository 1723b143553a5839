"""What `difysync run` counts and knows, for /metrics, /healthz and the status page (web.py).

``Metrics`` is an events.Observer: it counts what passes and the client report, in a
prometheus-client registry of its own (never the process-global one, so two services or
two tests in one process never share counts), and keeps the last outcomes and errors for
the page. ``Board`` joins those with what only the daemon knows (backoffs, dirty paths)
and what only the state DB knows (file counts, the last successful pass), read when
someone asks. Nothing here writes the state, talks to Dify or raises into a pass.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client import Enum as StateSet
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import StateError
from .events import Observer, Phase
from .models import SkipCode
from .outcomes import Result
from .plan import Kind
from .state import StateStore
from .statusview import iso  # the one time format of difysync's JSON: UTC, ISO 8601

if TYPE_CHECKING:  # pragma: no cover
    from .errors import DifyError
    from .outcomes import Outcome


RECENT_ACTIONS = 50
RECENT_ERRORS = 20
STALE_AFTER_PASSES = 3  # no successful full pass in this many schedule intervals: unhealthy
# Seconds; up to the 30 s default timeout and past it, so a slow server shows as such.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def phase_code(phase: Phase) -> str:
    """The phase as a label value and JSON code: ``backing_off``, not ``backing off``."""
    return phase.name.lower()


class WatcherState(str, Enum):
    RUNNING = "running"
    RESTARTING = "restarting"  # it died (or stopped delivering); a new one is being started
    STOPPED = "stopped"        # not started yet, or the service is stopping

    def __str__(self) -> str:
        return self.value


class Unhealthy(str, Enum):
    """Why /healthz answers 503 for a folder."""

    BACKING_OFF = "backing_off"  # an outage: the folder waits to try again
    ERROR = "error"              # the last pass failed and no retry is scheduled
    STALE = "stale"              # no successful full pass within 3x schedule.full_reconcile_minutes

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class RecentAction:
    at: float
    folder: str
    kind: str
    path: str
    result: Result
    message: str
    old_path: str | None = None


@dataclass(frozen=True, slots=True)
class RecentError:
    at: float
    folder: str
    message: str


class Metrics(Observer):
    """Counts for Prometheus and a short memory for the page; thread-safe, never raises
    on purpose (and the daemon hands it to the engine behind an events.Fanout anyway)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        from . import __version__

        self._clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        Info("difysync_build", "The running difysync's version.", registry=r).info({"version": __version__})
        self.actions = Counter("difysync_actions", "Actions ended, by folder, kind and result "
                               "(a skip repeated from the last pass is not counted again).",
                               ["folder", "kind", "result"], registry=r)
        self.sent_bytes = Counter("difysync_sent_bytes", "File content sent to Dify.", ["folder"], registry=r)
        self.requests = Histogram("difysync_request_duration_seconds", "HTTP attempts to Dify by route, "
                                  "method and status ('none': no answer), with their duration.",
                                  ["route", "method", "status"], buckets=REQUEST_BUCKETS, registry=r)
        self.retries = Counter("difysync_retries", "Requests sent again after a transient failure, "
                               "by the error's class.", ["error"], registry=r)
        self.phases = StateSet("difysync_folder_phase", "Where each folder is: in a pass, between passes, "
                               "backing off or in error.", ["folder"], states=[phase_code(p) for p in Phase],
                               registry=r)
        self.watcher = StateSet("difysync_watcher_state", "The file watcher.",
                                states=[s.value for s in WatcherState], registry=r)
        self.watch_errors = Counter("difysync_watcher_errors", "Errors the watcher reported (each "
                                    "followed by a full pass).", ["folder"], registry=r)
        self.watcher.state(WatcherState.STOPPED.value)
        self._lock = threading.Lock()
        self._phase: dict[str, Phase] = {}
        self._watcher_state = WatcherState.STOPPED
        self._recent: deque[RecentAction] = deque(maxlen=RECENT_ACTIONS)
        self._errors: deque[RecentError] = deque(maxlen=RECENT_ERRORS)

    # --- what the engine reports --------------------------------------------------------

    def phase(self, folder: str, phase: Phase) -> None:
        with self._lock:
            self._phase[folder] = phase
        self.phases.labels(folder).state(phase_code(phase))

    def outcome(self, folder: str, outcome: Outcome, nbytes: int) -> None:
        if nbytes:
            self.sent_bytes.labels(folder).inc(nbytes)
        if outcome.repeat:
            return  # the same skip as last pass: neither news nor a new action
        action = outcome.action
        self.actions.labels(folder, str(action.kind), outcome.result.value).inc()
        entry = RecentAction(self._clock(), folder, str(action.kind), action.rel_path, outcome.result,
                             outcome.message or action.reason, action.old_rel_path)
        with self._lock:
            self._recent.append(entry)
            if outcome.result is Result.FAILED:
                self._errors.append(RecentError(entry.at, folder, f"{action.rel_path}: {entry.message}"))

    def adopted(self, folder: str, count: int) -> None:
        if count:
            self.actions.labels(folder, str(Kind.ADOPT), Result.OK.value).inc(count)

    def request(self, method: str, route: str, status: int | None, seconds: float) -> None:
        self.requests.labels(route, method, str(status) if status is not None else "none").observe(seconds)

    def retry(self, about: str, error: DifyError, pause: float, attempt: int, attempts: int) -> None:
        self.retries.labels(type(error).__name__).inc()

    # --- what the daemon reports --------------------------------------------------------

    def track(self, folders: list[str]) -> None:
        """The folders the service syncs from now on (start, reload): new ones start idle,
        so each has its series; a folder no longer synced loses its phase (its counters
        stay, as counters do, until the service restarts)."""
        with self._lock:
            gone = [key for key in self._phase if key not in folders]
            new = [key for key in folders if key not in self._phase]
            for key in gone:
                del self._phase[key]
        for key in gone:
            self.phases.remove(key)
        for key in new:
            self.phase(key, Phase.IDLE)

    def watcher_state(self, state: WatcherState) -> None:
        with self._lock:
            self._watcher_state = state
        self.watcher.state(state.value)

    def watch_error(self, folder: str, error: BaseException) -> None:
        self.watch_errors.labels(folder).inc()
        self.folder_error(folder, f"watcher: {error}")

    def folder_error(self, folder: str, message: str) -> None:
        """A folder-level failure (an outage, a failed pass) for the page's error list."""
        with self._lock:
            last = self._errors[-1] if self._errors else None
            if last is None or (last.folder, last.message) != (folder, message):  # once per state change
                self._errors.append(RecentError(self._clock(), folder, message))

    # --- what the board reads -----------------------------------------------------------

    def phase_of(self, folder: str) -> Phase:
        with self._lock:
            return self._phase.get(folder, Phase.IDLE)

    def current_watcher_state(self) -> WatcherState:
        with self._lock:
            return self._watcher_state

    def recent(self) -> tuple[list[RecentAction], list[RecentError]]:
        """The last outcomes and errors, newest first."""
        with self._lock:
            return list(reversed(self._recent)), list(reversed(self._errors))


# --- the board: everything the endpoint shows ---------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveFolder:
    """What only the daemon knows of a folder right now."""

    key: str
    dataset: str             # the configured dataset name, else its id
    outage: str | None = None  # why the folder is in an outage (backing off, or retrying); None: it is not
    retry_in: float = 0.0    # seconds until the next try while backing off
    dirty: int = 0           # changed paths waiting for their debounce or the worker


@dataclass(frozen=True, slots=True)
class ServiceFacts:
    """The daemon's side of the picture, taken when the board is read."""

    folders: tuple[LiveFolder, ...]
    state_db: Path
    full_pass_seconds: float  # schedule.full_reconcile_minutes in seconds
    started_at: float         # wall clock


@dataclass(frozen=True, slots=True)
class FileCounts:
    synced: int = 0
    pending: int = 0      # sent; Dify has it queued
    indexing: int = 0     # sent; Dify is indexing it
    error: int = 0
    skipped: int = 0
    quarantined: int = 0  # of the skipped: indexing failed dify.quarantine_after times
    in_flight: int = 0    # unsettled journal rows: mutations sent (or about to be), not yet recorded


@dataclass(frozen=True, slots=True)
class StoredFolder:
    """What the state DB says of a folder."""

    counts: FileCounts = FileCounts()
    last_success: float | None = None  # the last whole pass that succeeded
    last_attempt: float | None = None
    last_attempt_error: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    reason: Unhealthy
    message: str


@dataclass(frozen=True, slots=True)
class FolderView:
    live: LiveFolder
    phase: Phase
    stored: StoredFolder
    problem: Problem | None

    def as_dict(self) -> dict[str, Any]:
        s = self.stored
        return {"folder": self.live.key, "dataset": self.live.dataset, "phase": phase_code(self.phase),
                "phase_text": self.phase.value, "healthy": self.problem is None,
                "problem": {"reason": self.problem.reason.value, "message": self.problem.message}
                if self.problem else None,
                "counts": {**asdict(s.counts), "dirty": self.live.dirty},
                "last_success": iso(s.last_success), "last_attempt": iso(s.last_attempt),
                "last_error": self.live.outage or s.last_attempt_error,
                "retry_in_seconds": round(self.live.retry_in, 1)}


@dataclass(frozen=True)
class Snapshot:
    folders: tuple[FolderView, ...]
    watcher: WatcherState
    started_at: float
    taken_at: float
    actions: list[RecentAction] = field(default_factory=list)
    errors: list[RecentError] = field(default_factory=list)
    state_error: str | None = None  # the state DB could not be read: counts are missing

    @property
    def problems(self) -> dict[str, Problem]:
        return {f.live.key: f.problem for f in self.folders if f.problem is not None}

    def health(self) -> dict[str, Any]:
        """/healthz's body: ``{"status": "ok"}``, or the reason of each unhealthy folder."""
        if not self.problems:
            return {"status": "ok"}
        return {"status": "unhealthy", "folders": [
            {"folder": key, "reason": p.reason.value, "message": p.message} for key, p in self.problems.items()]}

    def as_dict(self) -> dict[str, Any]:
        """/status.json: what the page shows."""
        from . import __version__

        return {"service": {"version": __version__, "started_at": iso(self.started_at),
                            "generated_at": iso(self.taken_at), "watcher": self.watcher.value,
                            "healthy": not self.problems, "state_error": self.state_error},
                "folders": [f.as_dict() for f in self.folders],
                "recent_actions": [{"at": iso(a.at), "folder": a.folder, "kind": a.kind, "path": a.path,
                                    "old_path": a.old_path, "result": a.result.value, "message": a.message}
                                   for a in self.actions],
                "recent_errors": [{"at": iso(e.at), "folder": e.folder, "message": e.message}
                                  for e in self.errors]}


def problem_of(phase: Phase, live: LiveFolder, stored: StoredFolder, facts: ServiceFacts,
               now: float) -> Problem | None:
    """Why a folder is unhealthy, or None. An outage first (from the first failure until
    a pass or poll gets through, the retries included), then a failed pass, then a folder
    whose last successful full pass (or the service's start, if later) is older than three
    schedule intervals, which covers the schedule's jitter with room to spare."""
    if live.outage is not None or phase is Phase.BACKING_OFF:
        retry = f"; retry in {_ago(live.retry_in)}" if live.retry_in >= 1 else "; retrying"
        return Problem(Unhealthy.BACKING_OFF, (live.outage or "an outage") + retry)
    if phase is Phase.ERROR:
        return Problem(Unhealthy.ERROR, stored.last_attempt_error or "the last pass failed")
    allowed = STALE_AFTER_PASSES * facts.full_pass_seconds
    since = max(stored.last_success or 0.0, facts.started_at)
    if now - since > allowed:
        what = (f"no successful full pass since {iso(stored.last_success)}" if stored.last_success
                and stored.last_success >= facts.started_at else "no successful full pass since the service started")
        return Problem(Unhealthy.STALE, f"{what}, {_ago(now - since)} ago (more than {STALE_AFTER_PASSES}x "
                                        f"schedule.full_reconcile_minutes)")
    return None


class Board:
    """Reads the picture when asked: the observer's phases and recent events, the
    daemon's ``ServiceFacts``, and the state DB's counts (one read-only connection per
    read). It also puts those counts into the registry, read at scrape time, so the
    gauges say what the state DB says now and never what it said after the last pass."""

    def __init__(self, metrics: Metrics, facts: Callable[[], ServiceFacts],
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics, self._facts, self._clock = metrics, facts, clock
        metrics.registry.register(_StateCollector(self))

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def snapshot(self) -> Snapshot:
        facts = self._facts()
        stored, state_error = read_state(facts.state_db, [f.key for f in facts.folders])
        now = self._clock()
        views = []
        for live in facts.folders:
            phase = self.metrics.phase_of(live.key)
            mine = stored.get(live.key, StoredFolder())
            views.append(FolderView(live, phase, mine, problem_of(phase, live, mine, facts, now)))
        actions, errors = self.metrics.recent()
        return Snapshot(tuple(views), self.metrics.current_watcher_state(), facts.started_at, now,
                        actions, errors, state_error)


def read_state(state_db: Path, folders: list[str]) -> tuple[dict[str, StoredFolder], str | None]:
    """Each folder's counts and last passes from the state DB (a few small queries per
    folder); an unreadable DB gives no counts and the reason."""
    try:
        with StateStore(state_db, readonly=True) as store:
            summaries = {s.folder: s for s in store.summaries() if s.folder in folders}
            quarantined: dict[str, int] = {}
            for p in store.problems():
                if p.code == SkipCode.QUARANTINED.value:  # no ErrorKind has that value
                    quarantined[p.folder] = quarantined.get(p.folder, 0) + 1
    except StateError as exc:
        return {}, str(exc)
    except sqlite3.Error as exc:  # busy past the timeout, say: no counts this time
        return {}, f"state DB {state_db}: {exc}"
    out = {}
    for key, s in summaries.items():
        counts = FileCounts(synced=s.synced, pending=s.pending, indexing=s.indexing, error=s.error,
                            skipped=s.skipped, quarantined=quarantined.get(key, 0), in_flight=s.journal)
        out[key] = StoredFolder(counts, s.last_full_reconcile, s.last_attempt, s.last_attempt_error)
    return out, None


_GAUGES: tuple[tuple[str, str, Callable[[FolderView], float]], ...] = (
    ("difysync_pending_files", "Files sent that Dify has not finished indexing (queued or indexing).",
     lambda v: v.stored.counts.pending + v.stored.counts.indexing),
    ("difysync_in_flight_operations", "Remote changes sent or about to be, not yet recorded (journal rows).",
     lambda v: v.stored.counts.in_flight),
    ("difysync_quarantined_files", "Files whose indexing failed dify.quarantine_after times.",
     lambda v: v.stored.counts.quarantined),
    ("difysync_synced_files", "Files in step with their document.", lambda v: v.stored.counts.synced),
    ("difysync_error_files", "Files whose last attempt failed.", lambda v: v.stored.counts.error),
    ("difysync_skipped_files", "Files not sent (type, size, quarantine, ...).", lambda v: v.stored.counts.skipped),
    ("difysync_dirty_paths", "Changed paths waiting for their debounce or the folder's worker.",
     lambda v: v.live.dirty),
    ("difysync_folder_healthy", "1 while /healthz counts the folder healthy, else 0.",
     lambda v: float(v.problem is None)),
)
_LAST_SUCCESS = ("difysync_last_success_timestamp_seconds",
                 "When the folder's last successful full pass ended (unix time; absent before the first).")


class _StateCollector(Collector):
    """The per-folder gauges, read from the board at scrape time."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def describe(self) -> Iterator[Metric]:
        for name, doc, _ in _GAUGES:
            yield GaugeMetricFamily(name, doc, labels=["folder"])
        yield GaugeMetricFamily(*_LAST_SUCCESS, labels=["folder"])

    def collect(self) -> Iterator[Metric]:
        views = self.board.snapshot().folders
        for name, doc, value in _GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["folder"])
            for view in views:
                family.add_metric([view.live.key], value(view))
            yield family
        last = GaugeMetricFamily(*_LAST_SUCCESS, labels=["folder"])
        for view in views:
            if view.stored.last_success is not None:
                last.add_metric([view.live.key], view.stored.last_success)
        yield last


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


__all__ = ["Board", "LiveFolder", "Metrics", "Problem", "ServiceFacts", "Snapshot", "Unhealthy",
           "WatcherState", "problem_of", "read_state"]
