"""Filesystem events -> debounced hints of where to look (Syncthing's watch aggregator).

The watcher only says *where* to look and *when*: it never decides what changed (the
scanner does, by stat-walking the hinted paths), never opens a file, and never loses a
hint silently: when events may have been lost it says so (``on_error``, ``is_alive``) so
the daemon runs a full pass.

Two parts: ``DirtyTracker`` (pure, clock passed in) turns a stream of path events into
due work; ``Watcher`` (watchdog glue) turns inotify events, or the differences between
two walks of a polled folder (scanpoll.py), into those path events, relative to each
folder root, with ignored and excluded paths left out.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from difysync.logs import log_fields
from difysync.scanner import DEFAULT_IGNORES, PatternMatcher, compile_patterns
from difysync.scanpoll import PolledFolder, ScanPoller

__all__ = [
    "DirtyTracker",
    "DueWork",
    "EventKind",
    "Watcher",
    "auto_watch_mode",
    "filesystem_type",
    "is_network_filesystem",
]

log = logging.getLogger(__name__)

EventKind = Literal["changed", "deleted", "dir", "dir_deleted", "moved", "dir_moved"]
WatchModeUsed = Literal["events", "poll", "off"]


# --- the aggregator ----------------------------------------------------------------------


@dataclass(frozen=True)
class DueWork:
    """What a pass should look at now: paths (files or directories, sorted) or everything."""

    paths: list[str]
    full_rescan: bool = False

    def __bool__(self) -> bool:
        return bool(self.paths) or self.full_rescan


@dataclass
class _Entry:
    first_seen: float
    last_event: float
    deleted: bool
    is_dir: bool = False
    # Half of a move (see DirtyTracker.moved): waits like a change, not like a delete.
    move_half: bool = False
    partners: set[str] = field(default_factory=set)


def _parent(rel_path: str) -> str:
    return rel_path.rpartition("/")[0]


class DirtyTracker:
    """Per-path debounce with a longer delay for deletes and a hard ceiling.

    A path is due when it has been quiet for ``debounce`` seconds (``delete_delay`` if
    its last event was a delete, so that a delete-and-recreate is seen as a change), or
    when it was first seen ``max_delay`` seconds ago, however busy it still is: unlike
    watchdog's debouncer, a steady trickle of events cannot postpone it forever.

    Past ``folder_threshold`` dirty paths directly in one directory, the directory is
    looked at instead; past ``rescan_threshold`` dirty paths in all, the whole folder is.
    Events below a dirty directory only refresh that directory's timers.

    A delete and a creation within ``debounce`` (at least one second) of each other are
    kept together (due at the later of their times) even when the event source did not
    pair them into a move: inotify reports a file moved into a just-created directory as
    a create, then (watchdog holds an unpaired move source for 0.5 s) a delete, and the
    planner can only see a rename when both sides are in the same pass. For the same
    reason nothing is due sooner than ``MOVE_GRACE`` after its last event.

    Not tied to any thread, but safe to call from several (watchdog calls back from its
    own threads while the daemon asks ``due()``).
    """

    def __init__(self, debounce: float, delete_delay: float, max_delay: float, *,
                 folder_threshold: int = 200, rescan_threshold: int = 5000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.debounce = debounce
        self.delete_delay = delete_delay
        self.max_delay = max_delay
        self.folder_threshold = folder_threshold
        self.rescan_threshold = rescan_threshold
        self._clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._dirs: set[str] = set()  # keys of directory entries, for the ancestor check
        self._per_parent: dict[str, int] = {}
        self._rescan: _Entry | None = None
        self._recent: deque[tuple[float, str, bool]] = deque()  # (time, key, deleted)

    # -- recording --

    def touch(self, rel_path: str, *, deleted: bool = False) -> None:
        """A file changed (or was deleted): look at it once things settle."""
        with self._lock:
            self._touch(rel_path, deleted=deleted, is_dir=False)

    def touch_dir(self, rel_dir: str, *, deleted: bool = False) -> None:
        """A whole directory changed (created with content, moved, deleted): stat-walk it."""
        with self._lock:
            self._touch(rel_dir, deleted=deleted, is_dir=True)

    def moved(self, src_rel: str, dst_rel: str, *, is_dir: bool = False) -> None:
        """``src_rel`` was renamed to ``dst_rel``.

        Recorded as a delete of the source and a change of the destination, except that
        the source does not wait the longer delete delay and the two become due at the
        same moment (the later of their two due times): the planner recognises a rename
        only when the vanished path and the new path are looked at in the same pass;
        otherwise the document would be deleted and uploaded again.
        """
        with self._lock:
            now = self._clock()
            src = self._touch(src_rel, deleted=True, is_dir=is_dir, now=now, pair=False)
            dst = self._touch(dst_rel, deleted=False, is_dir=is_dir, now=now, pair=False)
            if src is None or dst is None or src == dst:
                return  # absorbed by a dirty directory or a full rescan
            self._entries[src].move_half = True
            self._entries[src].partners.add(dst)
            self._entries[dst].partners.add(src)

    def note(self, rel_path: str, kind: EventKind, dest: str | None = None) -> None:
        """Record one ``Watcher`` event as delivered (see ``Watcher`` for the kinds)."""
        if kind in ("moved", "dir_moved"):
            if dest is None:
                raise ValueError(f"a {kind!r} event needs its destination")
            self.moved(rel_path, dest, is_dir=kind == "dir_moved")
        elif kind in ("dir", "dir_deleted"):
            self.touch_dir(rel_path, deleted=kind == "dir_deleted")
        else:
            self.touch(rel_path, deleted=kind == "deleted")

    def request_full_rescan(self) -> None:
        """Look at everything once things settle (events were lost, or too many)."""
        with self._lock:
            self._collapse_all(self._clock())

    # -- reading --

    def due(self) -> DueWork:
        """Pop and return everything that is due now."""
        with self._lock:
            now = self._clock()
            full = self._rescan is not None and self._own_due(self._rescan) <= now
            if full:
                self._rescan = None
            deadlines = self._deadlines()
            ready = sorted(p for p, when in deadlines.items() if when <= now)
            for path in ready:
                self._remove(path)
            return DueWork(ready, full)

    def next_deadline(self) -> float | None:
        """When (on the tracker's clock) the next path becomes due; None when idle."""
        with self._lock:
            times = list(self._deadlines().values())
            if self._rescan is not None:
                times.append(self._own_due(self._rescan))
            return min(times) if times else None

    def pending(self) -> int:
        """How many dirty entries wait (a pending full rescan counts as one)."""
        with self._lock:
            return len(self._entries) + (self._rescan is not None)

    def clear(self) -> None:
        """Forget everything (e.g. after a full pass made every hint moot)."""
        with self._lock:
            self._entries.clear()
            self._dirs.clear()
            self._per_parent.clear()
            self._recent.clear()
            self._rescan = None

    # -- internals (lock held) --

    def _own_due(self, entry: _Entry) -> float:
        delay = self.delete_delay if entry.deleted and not entry.move_half else self.debounce
        return min(entry.last_event + max(delay, self.MOVE_GRACE), entry.first_seen + self.max_delay)

    def _deadlines(self) -> dict[str, float]:
        """Each entry's due time; the members of a move group share the latest one."""
        out: dict[str, float] = {}
        for path, entry in self._entries.items():
            if path in out:
                continue
            if not entry.partners:
                out[path] = self._own_due(entry)
                continue
            group, todo = {path}, [path]
            while todo:
                for other in self._entries[todo.pop()].partners:
                    if other in self._entries and other not in group:
                        group.add(other)
                        todo.append(other)
            when = max(self._own_due(self._entries[p]) for p in group)
            out.update(dict.fromkeys(group, when))
        return out

    def _dirty_ancestor(self, rel_path: str) -> str | None:
        parts = rel_path.split("/")
        for i in range(len(parts) - 1, 0, -1):
            candidate = "/".join(parts[:i])
            if candidate in self._dirs:
                return candidate
        return None

    def _touch(self, rel_path: str, *, deleted: bool, is_dir: bool,
               now: float | None = None, pair: bool = True) -> str | None:
        """Record one event; return the key of the entry that now holds it, if any."""
        if now is None:
            now = self._clock()
        key = self._record(rel_path, deleted=deleted, is_dir=is_dir, now=now)
        if pair and key is not None:
            self._pair_with_recent(key, deleted, now)
        return key

    _PAIR_LIMIT = 32  # enough for a rename; a burst is collapsed or rescanned anyway
    MOVE_GRACE = 0.75

    def _pair_with_recent(self, key: str, deleted: bool, now: float) -> None:
        """Tie a delete to the creations just before or after it (and vice versa)."""
        recent = self._recent
        window = max(self.debounce, 1.0)
        while recent and (recent[0][0] < now - window or len(recent) > self._PAIR_LIMIT):
            recent.popleft()
        entry = self._entries[key]
        for _, other, other_deleted in recent:
            if other_deleted != deleted and other != key and other in self._entries:
                entry.partners.add(other)
                self._entries[other].partners.add(key)
        recent.append((now, key, deleted))

    def _record(self, rel_path: str, *, deleted: bool, is_dir: bool, now: float) -> str | None:
        if self._rescan is not None:
            self._rescan.last_event = now
            return None
        if rel_path in ("", "."):
            self._collapse_all(now)
            return None
        key = self._dirty_ancestor(rel_path) or rel_path
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_event = now
            entry.deleted = deleted
            entry.move_half = False  # a later event at this path is no longer half of a move
            if is_dir and key == rel_path and not entry.is_dir:
                entry.is_dir = True
                self._dirs.add(key)
                entry.first_seen = min([entry.first_seen, *self._absorb_below(key)])
            return key
        first_seen = now
        if is_dir:
            first_seen = min([now, *self._absorb_below(rel_path)])
        self._add(rel_path, _Entry(first_seen, now, deleted, is_dir))
        return self._check_thresholds(rel_path, now)

    def _add(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        if entry.is_dir:
            self._dirs.add(key)
        parent = _parent(key)
        self._per_parent[parent] = self._per_parent.get(parent, 0) + 1

    def _remove(self, key: str) -> _Entry:
        entry = self._entries.pop(key)
        self._dirs.discard(key)
        parent = _parent(key)
        left = self._per_parent[parent] - 1
        if left:
            self._per_parent[parent] = left
        else:
            del self._per_parent[parent]
        return entry

    def _absorb_below(self, rel_dir: str) -> list[float]:
        """Drop the entries below ``rel_dir``; return their first_seen (the ceiling holds)."""
        prefix = rel_dir + "/"
        below = [p for p in self._entries if p.startswith(prefix)]
        return [self._remove(p).first_seen for p in below]

    def _check_thresholds(self, key: str, now: float) -> str | None:
        """Collapse crowded directories into one entry, and too much into a full rescan."""
        parent = _parent(key)
        while self._per_parent.get(parent, 0) > self.folder_threshold:
            if parent == "":  # the crowded directory is the folder itself
                self._collapse_all(now)
                return None
            first = min(self._absorb_below(parent))
            existing = self._entries.get(parent)
            if existing is not None:
                existing.first_seen = min(existing.first_seen, first)
                existing.last_event, existing.deleted = now, False
                existing.is_dir = True
                self._dirs.add(parent)
            else:
                self._add(parent, _Entry(first, now, False, is_dir=True))
            key, parent = parent, _parent(parent)
        if len(self._entries) > self.rescan_threshold:
            self._collapse_all(now)
            return None
        return key

    def _collapse_all(self, now: float) -> None:
        first = min((e.first_seen for e in self._entries.values()), default=now)
        if self._rescan is not None:
            first = min(first, self._rescan.first_seen)
        self._entries.clear()
        self._dirs.clear()
        self._per_parent.clear()
        self._recent.clear()
        self._rescan = _Entry(first, now, False, is_dir=True)


# --- which mode for a folder -------------------------------------------------------------

# Filesystems whose changes inotify does not see (made on another machine or by a
# user-space server), or does not support reliably: these folders are polled.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "davfs",
    "lustre", "gpfs", "ncpfs", "coda", "vboxsf", "virtiofs",
})


def is_network_filesystem(fstype: str) -> bool:
    """Whether inotify cannot be trusted on this filesystem type (overlay is local)."""
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.")


def _unescape_mount_field(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def filesystem_type(path: Path | str, mountinfo: str | None = None) -> str | None:
    """The filesystem type of ``path`` from mountinfo text (default /proc/self/mountinfo):
    the mount whose mount point is the longest prefix of the resolved path. None if unknown."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(errors="surrogateescape")
        except OSError:
            return None
    target = os.path.realpath(path)
    best, best_len = None, -1
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = _unescape_mount_field(fields[4])
        after = line.split(" - ", 1)[1].split()
        if not after:
            continue
        inside = (target == point or point == "/"
                  or target.startswith(point.rstrip("/") + "/"))
        # Later lines win ties: a later mount on the same point hides the earlier one.
        if inside and len(point) >= best_len:
            best, best_len = after[0], len(point)
    return best


def auto_watch_mode(path: Path | str, mountinfo: str | None = None) -> Literal["events", "poll"]:
    """``poll`` for a network or FUSE filesystem, ``events`` otherwise."""
    fstype = filesystem_type(path, mountinfo)
    return "poll" if fstype is not None and is_network_filesystem(fstype) else "events"


# --- watchdog glue -----------------------------------------------------------------------

OnEvent = Callable[[str, str, EventKind, "str | None"], None]
OnError = Callable[[str, BaseException], None]

_WATCH_LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM)

# What the handler uses. watchdog sets the inotify mask from this list, so the kernel never
# queues an open or a close-without-write: a pass's own walk (every directory opened) and
# reads (every file uploaded) would otherwise come back as events by the thousand, each
# handled in Python on watchdog's thread while the pass runs, and count against the
# inotify queue. A directory's own modified/attrib events only echo its children's.
_EVENT_FILTER = [FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileDeletedEvent,
                 FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent]


@dataclass
class _Folder:
    key: str
    root: str
    requested: str
    poll_interval: float
    include: PatternMatcher
    exclude: PatternMatcher
    ignores: PatternMatcher
    mode: WatchModeUsed = "events"
    identity: tuple[int, int] | None = None
    failed: bool = False
    label: str = ""  # how log lines name the folder
    include_patterns: tuple[str, ...] = ("**/*",)   # as configured, for the poller's walk
    exclude_patterns: tuple[str, ...] = ()


class _Handler(FileSystemEventHandler):
    """Translates one folder's watchdog events into callbacks (see ``Watcher``)."""

    def __init__(self, watcher: Watcher, folder: _Folder) -> None:
        super().__init__()
        self._w = watcher
        self._f = folder
        self._prefix = folder.root if folder.root.endswith(os.sep) else folder.root + os.sep

    def dispatch(self, event: FileSystemEvent) -> None:
        # Never let an exception reach watchdog: it would kill the dispatching thread.
        try:
            self._dispatch(event)
        except Exception as exc:  # noqa: BLE001 - reported, not swallowed
            self._w._report_error(self._f.key, exc)

    def _rel(self, path: str | bytes, *, is_dir: bool) -> str | None:
        """The path relative to the root if it is one to report, else None."""
        path = os.fsdecode(path)
        if not path.startswith(self._prefix) or path == self._prefix:
            return None  # the root itself, or outside it
        rel = path[len(self._prefix):].replace(os.sep, "/")
        if path in self._w._ignore_paths:
            return None
        parts = rel.split("/")
        for i, name in enumerate(parts):
            if self._f.ignores.match_exact(name) or self._f.exclude.match_exact("/".join(parts[:i + 1])):
                return None
        if not is_dir and not self._f.include(rel):
            return None
        return rel

    def _dispatch(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            return  # generated for the contents of a moved directory: the directory covers them
        kind, is_dir = event.event_type, event.is_directory
        src = os.fsdecode(event.src_path)
        if src == self._f.root and kind in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            how = "deleted" if kind == EVENT_TYPE_DELETED else "moved"
            self._w._root_gone(self._f, f"folder root was {how}")
            return
        emit, key = self._w._on_event, self._f.key
        if kind == EVENT_TYPE_MOVED:
            old = self._rel(src, is_dir=is_dir)
            new = self._rel(event.dest_path, is_dir=is_dir) if event.dest_path else None
            if old is not None and new is not None:
                emit(key, old, "dir_moved" if is_dir else "moved", new)
            elif new is not None:  # e.g. an editor's save-by-rename from a temp file
                emit(key, new, "dir" if is_dir else "changed", None)
            elif old is not None:  # moved out of the folder, or onto an ignored name
                emit(key, old, "dir_deleted" if is_dir else "deleted", None)
            return
        rel = self._rel(src, is_dir=is_dir)
        if rel is None:
            return
        if is_dir:
            # A directory's own modified/attrib events only echo its children's events.
            if kind == EVENT_TYPE_CREATED:
                emit(key, rel, "dir", None)
            elif kind == EVENT_TYPE_DELETED:
                emit(key, rel, "dir_deleted", None)
        elif kind == EVENT_TYPE_DELETED:
            emit(key, rel, "deleted", None)
        elif kind in (EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED, EVENT_TYPE_ATTRIB):
            # Opened and closed-without-writing are left out: our own reads must not echo.
            emit(key, rel, "changed", None)


class _OverflowListener(logging.Handler):
    """watchdog only logs an inotify queue overflow; this turns the log record into errors."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(logging.WARNING)
        self._watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._watcher._events_lost("inotify queue overflowed: events were lost")


class Watcher:
    """Watches folder roots and calls back with paths relative to each root.

    Callbacks run on watchdog's threads; they must be quick and thread-safe
    (``DirtyTracker`` is):

    - ``on_event(folder_key, rel_path, kind, dest)``; ``dest`` is None except for moves.
      ``kind`` is one of ``"changed"`` (a file was created, written or had its
      attributes changed), ``"deleted"`` (a file is gone), ``"dir"`` (a directory
      appeared or was moved in: look at all below it), ``"dir_deleted"`` (a directory
      is gone), ``"moved"`` / ``"dir_moved"`` (a file / directory was renamed inside
      the folder from ``rel_path`` to ``dest``: both sides must be looked at in the
      same pass). ``DirtyTracker.note(rel_path, kind, dest)`` takes all of them as is.
      A rename from an ignored name (an editor's ``.file.swp`` or ``file.tmp`` saved
      onto ``file``) is a ``changed`` of the destination; a rename out of the folder or
      onto an ignored name is a ``deleted`` (``dir_deleted``) of the source.
    - ``on_error(folder_key, exc)`` when events for that folder may have been lost
      (root deleted or moved, inotify queue overflow, a callback raised): run a full pass.

    Paths are POSIX, relative to the root, non-UTF-8 names surrogate-escaped (as
    ``os.fsdecode`` gives them). Ignored names (``scanner.DEFAULT_IGNORES``) and excluded
    paths in any component, files outside ``include``, ``ignore_paths`` (the state
    database, with its -wal/-shm/-journal files) and the root itself are never reported.
    """

    def __init__(self, on_event: OnEvent, on_error: OnError, *,
                 ignore_paths: Iterable[Path] = (), ignores: Sequence[str] = DEFAULT_IGNORES,
                 mountinfo: str | None = None) -> None:
        self._on_event = on_event
        self._on_error = on_error
        self._ignores = compile_patterns(ignores)
        self._ignore_names = tuple(ignores)
        self._ignore_paths = {
            os.path.abspath(os.fspath(p)) + suffix
            for p in ignore_paths for suffix in ("", "-wal", "-shm", "-journal")
        }
        self._mountinfo = mountinfo
        self._folders: dict[str, _Folder] = {}
        self._lock = threading.RLock()
        self._inotify: BaseObserver | None = None
        self._polling: dict[float, ScanPoller] = {}
        self._started = False
        self._listener = _OverflowListener(self)

    # -- set-up --

    def add_folder(self, folder_key: str, root: Path, mode: Literal["auto", "events", "poll"] = "auto",
                   include: Sequence[str] = ("**/*",), exclude: Sequence[str] = (),
                   poll_interval: float = 30.0, label: str = "") -> None:
        """Watch ``root`` under ``folder_key`` (now if started, else on ``start()``); log
        lines name it ``label`` (default: its key)."""
        folder = _Folder(folder_key, os.path.abspath(os.fspath(root)), mode, poll_interval,
                         compile_patterns(include), compile_patterns(exclude), self._ignores,
                         label=label or folder_key, include_patterns=tuple(include),
                         exclude_patterns=tuple(exclude))
        if mode == "poll":
            folder.mode = "poll"
        elif mode == "auto":
            folder.mode = auto_watch_mode(folder.root, self._mountinfo)
            if folder.mode == "poll":
                log.info("%s: watching %s by polling every %gs: it is on a network or FUSE filesystem",
                         folder.label, folder.root, poll_interval, extra=log_fields(folder=folder.label))
        with self._lock:
            if folder_key in self._folders:
                raise ValueError(f"folder {folder_key!r} is already watched")
            self._folders[folder_key] = folder
            if self._started:
                self._schedule(folder)

    def mode_of(self, folder_key: str) -> str:
        """``events`` or ``poll`` as really used, or ``off`` if the root could not be watched."""
        return self._folders[folder_key].mode

    def start(self) -> None:
        """Start watching every folder added so far."""
        with self._lock:
            if self._started:
                return
            self._started = True
            logging.getLogger("watchdog.observers.inotify_c").addHandler(self._listener)
            # Observers start empty and folders are scheduled on running observers, so
            # that a failing folder fails alone (and falls back to polling) at schedule().
            for folder in self._folders.values():
                self._schedule(folder)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop all observers and wait up to ``timeout`` seconds for their threads."""
        with self._lock:
            observers: list[BaseObserver | ScanPoller] = [o for o in [self._inotify, *self._polling.values()]
                                                         if o is not None]
            self._inotify, self._polling, self._started = None, {}, False
            logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._listener)
        deadline = time.monotonic() + timeout
        for obs in observers:
            obs.stop()
        for obs in observers:
            obs.join(max(0.0, deadline - time.monotonic()))

    def is_alive(self) -> bool:
        """False if the daemon should restart the watcher and run a full pass: an observer,
        emitter or inotify reader thread died (watchdog's threads die quietly), a root
        could not be watched, or a root is no longer the directory that was watched."""
        with self._lock:
            if not self._started:
                return False
            if not all(p.is_alive() for p in self._polling.values()):
                return False
            if self._inotify is not None and not _observer_alive(self._inotify):
                return False
            return not any(folder.failed or folder.identity != _identity(folder.root)
                           for folder in self._folders.values())

    # -- internals --

    def _schedule(self, folder: _Folder) -> None:
        folder.identity = _identity(folder.root)
        if folder.mode == "events":
            try:
                self._schedule_events(folder)
                return
            except OSError as exc:
                if exc.errno not in _WATCH_LIMIT_ERRNOS:
                    self._fail(folder, exc)
                    return
                log.warning(
                    "%s: cannot watch %s with inotify (%s): polling it every %gs instead; raise "
                    "the limits fs.inotify.max_user_watches / fs.inotify.max_user_instances "
                    "(sysctl) to get events back", folder.label, folder.root, exc.strerror or exc,
                    folder.poll_interval, extra=log_fields(folder=folder.label))
                folder.mode = "poll"
        try:
            self._schedule_poll(folder)
        except OSError as exc:
            self._fail(folder, exc)

    def _schedule_events(self, folder: _Folder) -> None:
        from watchdog.observers.inotify import InotifyObserver

        if self._inotify is None:
            obs = InotifyObserver()  # OSError (EMFILE) at the max_user_instances limit
            obs.start()
            self._inotify = obs
        obs = self._inotify
        watch = obs.schedule(_Handler(self, folder), folder.root, recursive=True, event_filter=_EVENT_FILTER)
        missing = _unwatched_dirs(obs, watch, folder.root)
        if missing:
            obs.unschedule(watch)
            raise OSError(errno.ENOSPC, f"no inotify watch for {len(missing)} directories "
                                        f"(e.g. {missing[0]})")

    def _schedule_poll(self, folder: _Folder) -> None:
        """Poll ``folder`` with the scanner's walk (scanpoll.py); its first walk is taken
        here. OSError (FileNotFoundError) if the root cannot be walked."""
        poller = self._polling.get(folder.poll_interval)
        if poller is None:
            poller = ScanPoller(folder.poll_interval, self._on_event, self._poll_gone, self._report_error)
            self._polling[folder.poll_interval] = poller
            poller.start()
        prefix = folder.root.rstrip(os.sep) + os.sep
        skip = frozenset(p[len(prefix):].replace(os.sep, "/") for p in self._ignore_paths if p.startswith(prefix))
        poller.add(PolledFolder(folder.key, folder.root, folder.include_patterns, folder.exclude_patterns,
                                self._ignore_names, skip))

    def _poll_gone(self, folder_key: str, why: str) -> None:
        self._root_gone(self._folders[folder_key], why)

    def _fail(self, folder: _Folder, exc: BaseException) -> None:
        folder.mode, folder.failed = "off", True
        log.warning("%s: cannot watch %s: %s", folder.label, folder.root, exc,
                    extra=log_fields(folder=folder.label))
        self._report_error(folder.key, exc)

    def _root_gone(self, folder: _Folder, why: str) -> None:
        folder.failed = True
        self._report_error(folder.key, FileNotFoundError(errno.ENOENT, why, folder.root))

    def _events_lost(self, why: str) -> None:
        for folder in list(self._folders.values()):
            if folder.mode == "events":
                self._report_error(folder.key, OSError(why))

    def _report_error(self, folder_key: str, exc: BaseException) -> None:
        try:
            self._on_error(folder_key, exc)
        except Exception:  # noqa: BLE001 - the watcher's threads must survive the callback
            known = self._folders.get(folder_key)
            label = known.label if known is not None else folder_key
            log.exception("watch error callback failed for folder %s", label, extra=log_fields(folder=label))


def _observer_alive(obs: BaseObserver) -> bool:
    """The observer, its emitters and its inotify reader thread are all running."""
    if not obs.is_alive() or not all(e.is_alive() for e in list(obs.emitters)):
        return False
    reader = getattr(obs, "_inotify_fd", None)
    return not (isinstance(reader, threading.Thread) and not reader.is_alive())


def _identity(root: str) -> tuple[int, int] | None:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _unwatched_dirs(observer: BaseObserver, watch: object, root: str) -> list[str]:
    """Directories below ``root`` that got no inotify watch.

    watchdog skips a subdirectory whose watch cannot be added (it only raises for the
    root), so at the ``max_user_watches`` limit part of a tree would go unwatched
    silently. Best effort: reads watchdog internals, and says nothing if they change.
    """
    emitter = getattr(observer, "_emitter_for_watch", {}).get(watch)
    group = getattr(emitter, "_inotify", None)
    watched = getattr(group, "_active_callbacks_by_path", None)
    if not isinstance(watched, dict):
        return []
    missing = []
    for top, dirs, _ in os.walk(os.fsencode(root)):
        for name in list(dirs):
            path = os.path.join(top, name)
            if os.path.islink(path):
                dirs.remove(name)
            elif path not in watched:
                missing.append(path)
    if missing:  # a directory created since the walk gets its watch from its own event
        time.sleep(0.1)
        missing = [p for p in missing if p not in watched and os.path.isdir(p)]
    return [os.fsdecode(p) for p in missing]
