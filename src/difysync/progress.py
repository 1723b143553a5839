"""The live view of `difysync reconcile` on a terminal: one row per folder (phase, files
scanned, hashed, to send, sent, rate, ETA), retry notices above the rows, and `--wait`'s
indexing counts; and, kept with or without a display, how long each folder's wait took.

It shows what the engine tells it (an ``events.Observer``) and decides nothing. It is off
when nobody watches (stderr not a terminal, ``--json``, ``-q``), and while it is on, log
lines are printed above the rows instead of through them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID,
                           TimeRemainingColumn)
from rich.text import Text

from .errors import RateLimited, ServerUnreachable
from .events import Observer, Phase
from .outcomes import Result
from .plan import UPLOADS
from .remote import SETTLED
from .terminal import folder_labels, watched

if TYPE_CHECKING:  # pragma: no cover
    from .config import FolderSettings
    from .errors import DifyError
    from .outcomes import Outcome
    from .plan import Plan

# How --wait's statuses are shown: Dify's stages of indexing, grouped as a person reads them.
_QUEUED = frozenset({"waiting", "queuing"})
_INDEXING = frozenset({"parsing", "cleaning", "splitting", "indexing"})


@dataclass
class FolderProgress:
    """What one folder's row shows, apart from rich so it can be read and tested."""

    label: str
    phase: Phase = Phase.SCANNING  # a folder is first heard of when its pass begins
    since: float = 0.0           # when the phase began (monotonic seconds)
    scanned: int | None = None   # files the walk found (None: not walked yet)
    hashed: int = 0
    hash_total: int = 0
    hashed_bytes: int = 0
    to_send: int = 0             # uploads the plan holds
    send_bytes: int = 0          # ... and the file content they carry
    actions: int = 0             # mutating actions the plan holds
    ended: int = 0               # ... of which this many ended, however they ended
    sent: int = 0                # uploads that went through
    sent_bytes: int = 0
    failed: int = 0
    indexing: dict[str, int] = field(default_factory=dict)  # --wait: documents by indexing status
    waited: float = 0.0
    note: str = ""               # a retry being waited out
    sending: float = 0.0         # seconds the syncing phase took, once it is over

    def enter(self, phase: Phase, now: float) -> None:
        """A new phase from ``now``; leaving the syncing one keeps how long it took."""
        if self.phase is Phase.SYNCING and phase is not Phase.SYNCING:
            self.sending = now - self.since
        self.phase, self.since, self.note = phase, now, ""

    def bar(self) -> tuple[int, int | None]:
        """(done, total) of what the phase counts: files hashed, actions ended, documents
        settled; total None while it is not known (scanning, listing)."""
        if self.phase is Phase.HASHING:
            return self.hashed, self.hash_total or None
        if self.phase is Phase.SYNCING:
            return self.ended, self.actions
        if self.phase is Phase.WAITING:
            return sum(n for s, n in self.indexing.items() if s in SETTLED or s == "gone"), \
                sum(self.indexing.values())
        if self.phase is Phase.IDLE:
            return (self.ended, self.actions) if self.actions else (1, 1)
        return 0, None

    def detail(self, now: float) -> str:
        """``scanned 300 · hashed 12/12 (1.2 MB) · to send 12 (1.2 MB) · sent 3 (300 kB)``;
        while --wait polls, the indexing counts and the time waited instead."""
        if self.indexing:
            waited = now - self.since if self.phase is Phase.WAITING else self.waited
            return f"indexing: {indexing_counts(self.indexing)} · waited {waited:.0f} s"
        parts = []
        if self.scanned is not None:
            parts.append(f"scanned {self.scanned}")
        if self.hash_total:
            parts.append(f"hashed {self.hashed}/{self.hash_total} ({decimal(self.hashed_bytes)})")
        if self.actions or self.to_send:
            parts.append(f"to send {self.to_send} ({decimal(self.send_bytes)})")
            parts.append(f"sent {self.sent} ({decimal(self.sent_bytes)})")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return " · ".join(parts)

    def rate(self, now: float) -> str:
        """Files and bytes per second in the phase that moves them (hashing, sending), and
        once the sending is over, its average."""
        if self.phase is Phase.HASHING:
            files, nbytes, seconds = self.hashed, self.hashed_bytes, now - self.since
        elif self.phase is Phase.SYNCING:
            files, nbytes, seconds = self.sent, self.sent_bytes, now - self.since
        elif self.phase is Phase.IDLE and self.sending:
            files, nbytes, seconds = self.sent, self.sent_bytes, self.sending
        else:
            return ""
        if not files:
            return ""
        seconds = max(seconds, 1e-3)
        return f"{files / seconds:.1f} files/s, {decimal(int(nbytes / seconds))}/s"


def indexing_counts(counts: Mapping[str, int]) -> str:
    """``2 queued, 1 indexing, 3 completed, 0 error`` (paused and gone only when there are any)."""
    grouped = {"queued": 0, "indexing": 0, "completed": 0, "error": 0, "paused": 0, "gone": 0}
    for status, n in counts.items():
        name = "queued" if status in _QUEUED else "indexing" if status in _INDEXING else status
        grouped[name if name in grouped else "indexing"] += n
    return ", ".join(f"{n} {name}" for name, n in grouped.items()
                     if n or name in ("queued", "indexing", "completed", "error"))


def retry_notice(about: str, error: DifyError, pause: float, attempt: int, attempts: int) -> str:
    """``list documents: server unreachable, retry 3/5 in 4 s``."""
    if isinstance(error, ServerUnreachable):
        why = "server unreachable"
    elif isinstance(error, RateLimited):
        why = "rate limited"
    else:
        why = f"server error {error.status}" if error.status else "server error"
    wait = f"{pause:.0f} s" if pause >= 10 else f"{pause:.1f} s"
    return f"{about}: {why}, retry {attempt}/{attempts} in {wait}"


class _Column(ProgressColumn):
    """A column drawn from the folder's ``FolderProgress`` (the task's ``state`` field)."""

    def __init__(self, draw: Callable[[FolderProgress, float], Text], clock: Callable[[], float]) -> None:
        super().__init__()
        self.draw, self.clock = draw, clock

    def render(self, task: Task) -> Text:
        return self.draw(task.fields["state"], self.clock())


class _Eta(TimeRemainingColumn):
    """rich's estimate, for the phases that count something towards a known end."""

    def render(self, task: Task) -> Text:
        if task.fields["state"].phase not in _COUNTING or task.total is None:
            return Text("")
        return super().render(task)


_COUNTING = frozenset({Phase.HASHING, Phase.SYNCING, Phase.WAITING})


def _phase_text(state: FolderProgress, now: float) -> Text:
    if state.note:
        return Text(state.note, style="yellow")
    shown = {Phase.IDLE: "done"}.get(state.phase, str(state.phase))
    return Text(shown, style="red" if state.phase is Phase.ERROR else "cyan")


class ProgressDisplay(Observer):
    """The rows on stderr while a pass runs; use it as a context manager around the pass
    (and the --wait). Thread-safe: workers report outcomes and requests concurrently."""

    def __init__(self, console: Console, labels: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.labels = dict(labels or {})
        self.clock = clock
        self.folders: dict[str, FolderProgress] = {}
        self.notices: list[str] = []
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None  # the folder being worked on (passes run one at a time)
        self._lock = threading.RLock()
        self._logging = _LogsAbove(console)
        self.progress = Progress(
            _Column(lambda s, now: Text(s.label, style="bold"), clock), _Column(_phase_text, clock),
            BarColumn(bar_width=16), MofNCompleteColumn(),
            _Column(lambda s, now: Text(s.rate(now), style="green"), clock), _Eta(),
            _Column(lambda s, now: Text(s.detail(now)), clock),
            console=console, transient=True, redirect_stdout=False)

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        self._logging.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._logging.stop()
        self.progress.stop()

    # --- the engine's events ----------------------------------------------------------

    def phase(self, folder: str, phase: Phase) -> None:
        with self._lock:
            state = self._state(folder)
            state.enter(phase, self.clock())
            self._current = folder if phase not in (Phase.IDLE, Phase.ERROR) else self._current
            self._show(folder, restart=True)

    def scanned(self, folder: str, files: int) -> None:
        with self._lock:
            self._state(folder).scanned = files
            self._show(folder)

    def hashing(self, folder: str, done: int, total: int, nbytes: int) -> None:
        with self._lock:
            state = self._state(folder)
            state.hashed, state.hash_total, state.hashed_bytes = done, total, nbytes
            self._show(folder)

    def planned(self, folder: str, plan: Plan, send_bytes: int) -> None:
        with self._lock:
            state = self._state(folder)
            state.to_send = sum(1 for a in plan.actions if a.kind in UPLOADS)
            state.send_bytes, state.actions = send_bytes, len(plan.mutating)
            self._show(folder)

    def outcome(self, folder: str, outcome: Outcome, nbytes: int) -> None:
        with self._lock:
            state = self._state(folder)
            state.note = ""
            if outcome.action.mutating:
                state.ended += 1
            if outcome.result is Result.OK and outcome.action.kind in UPLOADS:
                state.sent += 1
                state.sent_bytes += nbytes
            elif outcome.result is Result.FAILED:
                state.failed += 1
            self._show(folder)

    def request(self, method: str, route: str, status: int | None, seconds: float) -> None:
        if status is not None and status < 400:  # an answer again: the retry is over
            with self._lock:
                if self._current is not None and self._state(self._current).note:
                    self._state(self._current).note = ""
                    self._show(self._current)

    def retry(self, about: str, error: DifyError, pause: float, attempt: int, attempts: int) -> None:
        notice = retry_notice(about, error, pause, attempt, attempts)
        with self._lock:
            self.notices.append(notice)
            if self._current is not None:
                self._state(self._current).note = f"retry {attempt}/{attempts}"
                self._show(self._current)
        self.progress.console.print(Text(notice, style="yellow"))

    def indexing(self, folder: str, counts: Mapping[str, int], elapsed: float) -> None:
        with self._lock:
            state = self._state(folder)
            restart = state.phase is not Phase.WAITING
            state.enter(Phase.WAITING, self.clock() - elapsed)  # since the wait's start: the time shown moves
            state.indexing, state.waited = dict(counts), elapsed
            self._show(folder, restart=restart)

    # --- the rows ---------------------------------------------------------------------

    def _state(self, folder: str) -> FolderProgress:
        state = self.folders.get(folder)
        if state is None:
            state = self.folders[folder] = FolderProgress(self.labels.get(folder, folder), since=self.clock())
            self._tasks[folder] = self.progress.add_task(state.label, total=None, state=state)
        return state

    def _show(self, folder: str, restart: bool = False) -> None:
        """Move the folder's bar; a new phase starts it afresh, so the ETA is the phase's own."""
        done, total = self.folders[folder].bar()
        if restart:
            self.progress.reset(self._tasks[folder], total=total, completed=done)
        else:
            self.progress.update(self._tasks[folder], total=total, completed=done)


class _LogsAbove:
    """While the rows are live, difysync's log lines go through their console (printed
    above the rows, never through them), formatted and filtered as by the stderr handler
    they stand in for (logs.setup_logging's, marked ``_difysync``); afterwards that one
    is back."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.replaced: list[tuple[logging.Handler, logging.Handler]] = []

    def start(self) -> None:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_difysync", False)]:
            stand_in = _ConsoleHandler(self.console, handler)
            root.removeHandler(handler)
            root.addHandler(stand_in)
            self.replaced.append((handler, stand_in))

    def stop(self) -> None:
        root = logging.getLogger()
        for handler, stand_in in self.replaced:
            root.removeHandler(stand_in)
            root.addHandler(handler)
        self.replaced.clear()


class _ConsoleHandler(logging.Handler):
    _STYLES: ClassVar[dict[int, str]] = {logging.WARNING: "yellow", logging.ERROR: "red",
                                         logging.CRITICAL: "bold red"}

    def __init__(self, console: Console, like: logging.Handler) -> None:
        super().__init__(like.level)
        self.console = console
        self.setFormatter(like.formatter)
        for f in like.filters:
            self.addFilter(f)

    def emit(self, record: logging.LogRecord) -> None:
        try:  # a Text, not a str: a file name with [brackets] is not rich markup
            self.console.print(Text(self.format(record), style=self._STYLES.get(record.levelno, "")),
                               soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own convention for a failing handler
            self.handleError(record)


class WaitClock(Observer):
    """How long `--wait` took for each folder: until its documents had all settled, or
    the last poll when they never did. The summary's elapsed time includes it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._settled: set[str] = set()

    def indexing(self, folder: str, counts: Mapping[str, int], elapsed: float) -> None:
        if folder in self._settled:
            return
        self.seconds[folder] = elapsed
        if all(s in SETTLED or s == "gone" for s in counts):
            self._settled.add(folder)


def for_terminal(folders: Iterable[FolderSettings], *, as_json: bool, level: str) -> ProgressDisplay | None:
    """The display on stderr, or None when nobody watches there."""
    if not watched(as_json, level, sys.stderr):
        return None
    return ProgressDisplay(Console(stderr=True), folder_labels(folders))


__all__ = ["FolderProgress", "ProgressDisplay", "WaitClock", "folder_labels", "for_terminal", "indexing_counts",
           "retry_notice", "watched"]
