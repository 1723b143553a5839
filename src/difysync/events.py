"""What a pass and the client tell whoever is watching: the progress display, the metrics,
the status page. One small interface, so the engine knows none of them.

An ``Observer`` gets plain values (a folder key, a count, an ``Outcome``); every method has
a no-op default, so a watcher overrides only what it shows. The engine calls them from the
thread doing the work (the pass's thread, or a request's worker), so an observer keeps its
methods short and thread-safe, and never raises: ``Fanout`` swallows and logs what one
does, so a broken display cannot fail a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .errors import DifyError
    from .outcomes import Outcome
    from .plan import Plan

log = logging.getLogger(__name__)


class Phase(str, Enum):
    """Where a folder is in its pass (the daemon adds the states between passes)."""

    IDLE = "idle"
    SCANNING = "scanning"        # walking the tree
    HASHING = "hashing"          # reading changed files
    LISTING = "listing"          # asking Dify what the dataset holds
    SYNCING = "syncing"          # sending the plan
    WAITING = "waiting"          # --wait: Dify is still indexing what we sent
    BACKING_OFF = "backing off"  # the server is unreachable; the next try is scheduled
    ERROR = "error"              # the last pass failed and no retry is scheduled

    def __str__(self) -> str:
        return self.value


class Observer:
    """No-op defaults; override what you show. ``folder`` is the folder's key."""

    def phase(self, folder: str, phase: Phase) -> None:
        """The folder entered ``phase``."""

    def scanned(self, folder: str, files: int) -> None:
        """The walk is done and found ``files`` files."""

    def hashing(self, folder: str, done: int, total: int, nbytes: int) -> None:
        """``done`` of ``total`` files that need hashing are hashed (``nbytes`` read so far)."""

    def planned(self, folder: str, plan: Plan, send_bytes: int) -> None:
        """The plan is made; its uploads carry ``send_bytes`` bytes of file content."""

    def outcome(self, folder: str, outcome: Outcome, nbytes: int) -> None:
        """One action ended (``nbytes``: the file content it sent, 0 for none)."""

    def adopted(self, folder: str, count: int) -> None:
        """``count`` adoptions decided while listing were recorded (they have no outcome each)."""

    def request(self, method: str, route: str, status: int | None, seconds: float) -> None:
        """One HTTP attempt ended (``status`` None: no answer). ``route`` has no ids in it."""

    def retry(self, about: str, error: DifyError, pause: float, attempt: int, attempts: int) -> None:
        """A request failed and is sent again in ``pause`` seconds (retry ``attempt`` of ``attempts``)."""

    def indexing(self, folder: str, counts: Mapping[str, int], elapsed: float) -> None:
        """``--wait``: how many documents are in each indexing status now."""


class Fanout(Observer):
    """Hands every event to each observer in turn; one that raises is logged and skipped."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers = [o for o in observers if o is not None]

    def _each(self, name: str, *args: object) -> None:
        for o in self.observers:
            try:
                getattr(o, name)(*args)
            except Exception:  # noqa: BLE001 - a display or metric must never fail a pass
                log.debug("observer %r failed on %s", o, name, exc_info=True)

    def phase(self, folder: str, phase: Phase) -> None:
        self._each("phase", folder, phase)

    def scanned(self, folder: str, files: int) -> None:
        self._each("scanned", folder, files)

    def hashing(self, folder: str, done: int, total: int, nbytes: int) -> None:
        self._each("hashing", folder, done, total, nbytes)

    def planned(self, folder: str, plan: Plan, send_bytes: int) -> None:
        self._each("planned", folder, plan, send_bytes)

    def outcome(self, folder: str, outcome: Outcome, nbytes: int) -> None:
        self._each("outcome", folder, outcome, nbytes)

    def adopted(self, folder: str, count: int) -> None:
        self._each("adopted", folder, count)

    def request(self, method: str, route: str, status: int | None, seconds: float) -> None:
        self._each("request", method, route, status, seconds)

    def retry(self, about: str, error: DifyError, pause: float, attempt: int, attempts: int) -> None:
        self._each("retry", about, error, pause, attempt, attempts)

    def indexing(self, folder: str, counts: Mapping[str, int], elapsed: float) -> None:
        self._each("indexing", folder, counts, elapsed)


NOBODY = Observer()

__all__ = ["Fanout", "NOBODY", "Observer", "Phase"]
