"""Watch mode ``poll``: walk each folder every interval and report what differs from the
last walk, as the same path events inotify would give.

This replaces watchdog's PollingObserver, which snapshots every entry below the root
(``.git`` and excluded trees included) as an ``os.stat_result`` and diffs the snapshots
in Python on every poll. Here a poll is the scanner's own walk (ignored names and
excluded directories are never entered) kept as columns, and a poll that finds nothing
changed is one list and three array comparisons: a poll costs what a quiet pass's walk
costs, and its memory is that walk's columns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from difysync.scanner import FileColumns, scan_tree

__all__ = ["Change", "PolledFolder", "ScanPoller", "changes_between"]

# (kind, rel_path, dest): the kinds and meaning of ``watch.Watcher``'s events.
Change = tuple[str, str, "str | None"]


def changes_between(old: FileColumns, new: FileColumns, *, exists: Callable[[str], bool]) -> list[Change]:
    """What happened between two walks of one folder, as watcher events.

    A file whose size, mtime or inode differs is ``changed``. A vanished file and a new
    one with the same inode, size and mtime are a ``moved``; when every file of a vanished
    directory (``exists`` says it is gone) reappears under one new directory with the same
    names below it, that is one ``dir_moved``. New files in a directory the last walk did
    not have are one ``dir`` event for the topmost new directory, files of a directory
    that is gone one ``dir_deleted``; the rest are ``changed`` and ``deleted``.
    """
    if old.paths == new.paths and old.sizes == new.sizes and old.mtimes == new.mtimes \
            and old.inodes == new.inodes:
        return []
    before = {p: (old.sizes[i], old.mtimes[i], old.inodes[i]) for i, p in enumerate(old.paths)}
    after = {p: (new.sizes[i], new.mtimes[i], new.inodes[i]) for i, p in enumerate(new.paths)}
    out: list[Change] = [("changed", p, None) for p, s in after.items() if p in before and before[p] != s]
    gone = [p for p in before if p not in after]
    added = [p for p in after if p not in before]
    moves = _moves(gone, added, before, after)
    moved_src, moved_dst = set(moves), set(moves.values())
    out += _dir_moves(moves, exists)
    out += _appeared([p for p in added if p not in moved_dst], _dirs_of(before), "dir", "changed")
    out += _appeared([p for p in gone if p not in moved_src], _dirs_of(after), "dir_deleted", "deleted")
    return out


def _moves(gone: list[str], added: list[str], before: dict, after: dict) -> dict[str, str]:
    """Vanished path -> new path, paired by (size, mtime, inode), when that pairing is unique."""
    by_stat: dict[tuple[int, int, int], list[str]] = {}
    for p in gone:
        by_stat.setdefault(before[p], []).append(p)
    out = {}
    for p in added:
        sources = by_stat.get(after[p])
        if sources is not None and len(sources) == 1:
            out[sources.pop()] = p
    return out


def _dir_moves(moves: dict[str, str], exists: Callable[[str], bool]) -> list[Change]:
    """File moves, with those that make up a whole directory's rename folded into one."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    singles: list[Change] = []
    for src, dst in moves.items():
        s, d = src.split("/"), dst.split("/")
        same = 0
        while same < min(len(s), len(d)) - 1 and s[-1 - same] == d[-1 - same]:
            same += 1
        if same == 0:
            singles.append(("moved", src, dst))
        else:
            groups.setdefault(("/".join(s[:-same]), "/".join(d[:-same])), []).append((src, dst))
    for (src_dir, dst_dir), pairs in groups.items():
        if src_dir and dst_dir and not exists(src_dir):
            singles.append(("dir_moved", src_dir, dst_dir))
        else:
            singles += [("moved", s, d) for s, d in pairs]
    return singles


def _dirs_of(files: Iterable[str]) -> set[str]:
    dirs: set[str] = set()
    for p in files:
        parent = p.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    return dirs


def _appeared(paths: list[str], other_dirs: set[str], dir_kind: str, file_kind: str) -> list[Change]:
    """One ``dir_kind`` event per topmost directory the other walk did not have, else one
    ``file_kind`` event per file."""
    out: list[Change] = []
    told: set[str] = set()
    for p in paths:
        parts = p.split("/")[:-1]
        top = next(("/".join(parts[:i]) for i in range(1, len(parts) + 1)
                    if "/".join(parts[:i]) not in other_dirs), None)
        if top is None:
            out.append((file_kind, p, None))
        elif top not in told:
            told.add(top)
            out.append((dir_kind, top, None))
    return out


@dataclass
class PolledFolder:
    """One folder as the poller walks it."""

    key: str
    root: str
    include: Sequence[str]
    exclude: Sequence[str]
    ignores: Sequence[str]
    skip: frozenset[str] = frozenset()   # relative paths never reported (the state DB)
    last: FileColumns | None = None   # the last walk (taken by ScanPoller.add)
    gone: bool = False

    def walk(self) -> tuple[FileColumns | None, str | None]:
        """This folder's files now, or None and why the root cannot be walked."""
        scan = scan_tree(self.root, self.include, self.exclude, ignores=self.ignores)
        if scan.root_error is not None:
            return None, scan.root_error
        found = scan.found
        for rel in self.skip:
            if rel in found.paths:
                i = found.paths.index(rel)
                for column in (found.paths, found.sizes, found.mtimes, found.inodes):
                    del column[i]
        return found, None


OnChange = Callable[[str, str, str, "str | None"], None]
OnGone = Callable[[str, str], None]
OnFailure = Callable[[str, BaseException], None]


class ScanPoller(threading.Thread):
    """Walks its folders every ``interval`` seconds and reports each difference.

    ``on_change(key, rel_path, kind, dest)`` as ``watch.Watcher``'s ``on_event``;
    ``on_gone(key, why)`` once when a root can no longer be walked; ``on_failure(key,
    exc)`` when a poll raised (the folder's events may have been lost). The first walk
    of a folder is taken when it is added, so that nothing changed after that is missed.
    """

    def __init__(self, interval: float, on_change: OnChange, on_gone: OnGone, on_failure: OnFailure) -> None:
        super().__init__(name=f"difysync-poll-{interval:g}s", daemon=True)
        self.interval = interval
        self._on_change, self._on_gone, self._on_failure = on_change, on_gone, on_failure
        self._folders: dict[str, PolledFolder] = {}
        self._halt = threading.Event()

    def add(self, folder: PolledFolder) -> None:
        """Start polling ``folder``: its first walk is taken now."""
        folder.last, why = folder.walk()
        if why is not None:
            raise FileNotFoundError(why)
        self._folders[folder.key] = folder

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            for folder in list(self._folders.values()):
                if self._halt.is_set():
                    return
                try:
                    self.poll(folder)
                except Exception as exc:  # noqa: BLE001 - reported; the thread must go on
                    self._on_failure(folder.key, exc)

    def poll(self, folder: PolledFolder) -> None:
        """Walk ``folder`` once and report what changed since its last walk (only the
        poller's thread calls this once the folder is added)."""
        if folder.gone or folder.last is None:
            return
        now, why = folder.walk()
        if now is None:
            folder.gone = True
            self._on_gone(folder.key, why or "folder root is gone")
            return
        found = changes_between(folder.last, now, exists=lambda rel: os.path.isdir(os.path.join(folder.root, rel)))
        folder.last = now
        for kind, rel, dest in found:
            self._on_change(folder.key, rel, kind, dest)
