"""One walk of a folder shared with helper processes: the result of scanner.scan_tree,
sooner when there are CPUs to spare.

A walk costs a system call and some Python for every entry; on a big tree the Python is
most of it, and it holds one core. The tree is cut at a depth with enough directories to
deal out: the levels above the cut are walked here, and each directory at the cut is
left in place as a subtree, at the very point of the order where one walk would meet it.
The subtrees are dealt out in turn to this process and its helpers, and the columns each
walk finds are put back in their places: the result is the one a single walk gives, file
for file and in the same order, which the scan digest of marks.py depends on. A helper
that fails costs time, not files: its subtrees are walked here.

Helpers are forked, and a fork copies only the thread that calls it: a lock another
thread held stays held in the copy. So helpers are forked only by a process that runs one
thread, and there are two kinds:

- a one-shot command forks its helpers when its walk begins (``begin_scan(helpers=N)``),
  and they end with it;
- the service has threads from its start: it forks ``StandingHelpers`` before it starts
  them, and lends them to each whole pass's walk over a pipe for the rest of its life.
"""

from __future__ import annotations

import marshal
import os
import signal
import struct
import sys
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from .models import ScanProblem, SkipCode
from .scanner import (DEFAULT_IGNORES, FileColumns, ScanResult, ScanRules, Split, Subtree, compile_patterns,
                      scan_rules, sorted_problems, unreadable_root, walk_below)

__all__ = ["StandingHelpers", "Walk", "begin_scan", "spare_cpus"]

SPLIT_MIN_SUBTREES = 8  # fewer directories than this at every depth tried: no helper
SPLIT_MAX_DEPTH = 3
SPLIT_MAX_HEAD = 5_000  # files above the cut: cutting deeper would walk them again
_FRAME = struct.Struct("!Q")  # a standing helper's messages: their length, then marshal data


def spare_cpus(wanted: int) -> int:
    """How many helpers may be forked now: none but on Linux, in a process that runs one
    thread, with CPUs beside this one to run on; at most ``wanted``."""
    if wanted <= 0 or not sys.platform.startswith("linux") or threading.active_count() != 1:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:  # a system call filter that refuses it: no helper
        return 0
    return max(0, min(wanted, cpus - 1))


def begin_scan(root: Path, include: Sequence[str] = ("**/*",), exclude: Sequence[str] = (),
               *, ignores: Sequence[str] = DEFAULT_IGNORES, helpers: int = 0,
               standing: StandingHelpers | None = None) -> Walk:
    """scan_tree in two steps: begun here, with up to ``helpers`` helpers forked for it
    when that is safe, or the ``standing`` ones when they are free; finished by
    ``Walk.result()``. Close the walk (or use ``with``) if ``result`` is never called."""
    rules = scan_rules(root, include, exclude, ignores)
    walk = Walk(rules, unreadable_root(rules.root))
    if walk.root_error is None:
        walk.share(spare_cpus(helpers), standing)
    return walk


# --- the walk ----------------------------------------------------------------------------


class _Job:
    """Subtrees a helper walks for one walk, and how its answer comes back."""

    def __init__(self, share: list[int], answer: _Answer) -> None:
        self.share, self.answer = share, answer


class Walk:
    """A scan begun by begin_scan: its helpers, if any, are at work."""

    def __init__(self, rules: ScanRules, root_error: str | None) -> None:
        self.rules, self.root_error = rules, root_error
        self._problems: set[ScanProblem] = set()
        self._head: FileColumns | None = None  # the levels above the cut, when cut
        self._subtrees: list[Subtree] = []
        self._own: list[int] = []
        self._jobs: list[_Job] = []
        self._standing: StandingHelpers | None = None

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def shared(self) -> int:
        """How many helpers work on this walk."""
        return len(self._jobs)

    def share(self, forked: int, standing: StandingHelpers | None) -> None:
        """Cut the tree and deal part of its subtrees out to helpers."""
        lent = standing.lend() if standing is not None else []
        if not forked and not lent:
            return
        self._head, self._subtrees = _cut(self.rules, self._problems)
        workers = 1 + (len(lent) or forked) if len(self._subtrees) >= SPLIT_MIN_SUBTREES else 1
        shares = [list(range(w, len(self._subtrees), workers)) for w in range(workers)]
        self._own = shares[0]
        for n, share in enumerate(shares[1:]):
            trees = [self._subtrees[i] for i in share]
            answer = lent[n].ask(self.rules, trees) if lent else _fork_helper(self.rules, trees)
            if answer is None:
                self._own.extend(share)
            else:
                self._jobs.append(_Job(share, answer))
        if lent:
            self._standing = standing

    def result(self) -> ScanResult:
        if self.root_error is not None:
            return ScanResult(FileColumns(), [], self.root_error)
        try:
            found = self._found()
        finally:
            self.close()
        return ScanResult(found, sorted_problems(self._problems), None)

    def close(self) -> None:
        """Stop what helpers are still doing for this walk; give standing ones back."""
        for job in self._jobs:
            job.answer.cancel()
        self._jobs = []
        if self._standing is not None:
            self._standing.give_back()
            self._standing = None

    def _found(self) -> FileColumns:
        rules, problems = self.rules, self._problems
        if self._head is None:
            found = FileColumns()
            walk_below(rules, rules.root, "", False, found, problems)
            return found
        walked = {i: self._walk_subtree(i) for i in self._own}
        while self._jobs:
            job = self._jobs.pop(0)
            columns = _columns(job.answer.wait(), len(job.share), problems)
            for n, i in enumerate(job.share):
                walked[i] = columns[n] if columns is not None else self._walk_subtree(i)
        return _assemble(self._head, self._subtrees, walked)

    def _walk_subtree(self, i: int) -> FileColumns:
        tree, found = self._subtrees[i], FileColumns()
        walk_below(self.rules, tree.path, tree.rel, tree.included, found, self._problems)
        return found


def _cut(rules: ScanRules, problems: set[ScanProblem]) -> tuple[FileColumns, list[Subtree]]:
    """The files above the cut, and the subtrees below it in the order one walk meets them;
    the cut goes down level by level until there are enough subtrees to share."""
    for depth in range(1, SPLIT_MAX_DEPTH + 1):
        head, split, seen = FileColumns(), Split(depth), set()
        walk_below(rules, rules.root, "", False, head, seen, split)
        if (len(split.subtrees) >= SPLIT_MIN_SUBTREES or len(head) > SPLIT_MAX_HEAD or not split.subtrees
                or depth == SPLIT_MAX_DEPTH):
            problems |= seen
            return head, split.subtrees
    raise AssertionError("unreachable")  # pragma: no cover


def _assemble(head: FileColumns, subtrees: Sequence[Subtree], walked: dict[int, FileColumns]) -> FileColumns:
    """The columns one walk would have made: each subtree's files put back at its place."""
    out, at = FileColumns(), 0
    for i, tree in enumerate(subtrees):
        out.extend(head, at, tree.at)
        out.extend(walked[i])
        at = tree.at
    out.extend(head, at)
    return out


# --- what helpers send ---------------------------------------------------------------------


def _walked(rules: ScanRules, subtrees: Sequence[Subtree]) -> bytes:
    """Walk ``subtrees``: their columns and problems, as a helper sends them."""
    problems: set[ScanProblem] = set()
    columns = []
    for tree in subtrees:
        found = FileColumns()
        walk_below(rules, tree.path, tree.rel, tree.included, found, problems)
        columns.append((found.paths, found.sizes.tobytes(), found.mtimes.tobytes(), found.inodes.tobytes()))
    return marshal.dumps(([(p.rel_path, p.reason, p.code.value) for p in problems], columns))


def _columns(payload: bytes | None, expected: int, problems: set[ScanProblem]) -> list[FileColumns] | None:
    """A helper's columns (one per subtree it was given), its problems added to
    ``problems``; None for a missing or damaged answer (then nothing is added)."""
    if not payload:
        return None
    try:
        found_problems, columns = marshal.loads(payload)
        out = [FileColumns.from_bytes(*c) for c in columns]
        found = {ScanProblem(rel, reason, SkipCode(code)) for rel, reason, code in found_problems}
    except (ValueError, TypeError, EOFError):
        return None
    if len(out) != expected:
        return None
    problems |= found
    return out


def _quiet_signals() -> None:
    """A helper ends with the command (Ctrl-C, the service's stop) and has no reload."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class _Answer:
    """What one helper sends back for one walk."""

    def wait(self) -> bytes | None:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError


# --- helpers forked for one walk -----------------------------------------------------------


@dataclass
class _Forked(_Answer):
    pid: int
    fd: int  # the read end of the pipe its answer arrives on
    done: bool = False

    def wait(self) -> bytes | None:
        try:
            with open(self.fd, "rb") as pipe:
                payload = pipe.read()
        except OSError:
            payload = b""
        self.done = True
        return payload if _reap(self.pid) == 0 else None

    def cancel(self) -> None:
        if not self.done:
            with suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with suppress(OSError):
                os.close(self.fd)
            _reap(self.pid)
            self.done = True


def _fork_helper(rules: ScanRules, subtrees: list[Subtree]) -> _Forked | None:
    """A helper process walking ``subtrees`` and ending; None if one cannot be made."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # pragma: no cover - runs in the helper (its coverage is not collected)
        os.close(read_fd)
        _forked_main(rules, subtrees, write_fd)
    os.close(write_fd)
    return _Forked(pid, read_fd)


def _forked_main(rules: ScanRules, subtrees: list[Subtree], fd: int) -> NoReturn:  # pragma: no cover
    """A forked helper's whole life: walk, send, end. It never returns into the code it was
    forked from, and ends without flushing or finalizing anything of the parent's."""
    code = 1
    try:
        _quiet_signals()
        payload = _walked(rules, subtrees)
        with open(fd, "wb") as out:
            out.write(payload)
        code = 0
    finally:
        os._exit(code)


def _reap(pid: int) -> int:
    """Wait for a helper to end; its exit status (-1: it could not be waited for)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status)


# --- standing helpers (the service) --------------------------------------------------------


@dataclass
class _Standing:
    """One standing helper: a request pipe to it, an answer pipe from it."""

    pid: int
    to_it: int
    from_it: int
    alive: bool = True

    def ask(self, rules: ScanRules, subtrees: list[Subtree]) -> _Answer | None:
        request = marshal.dumps(((rules.root, rules.real_root, rules.include.patterns, rules.exclude.patterns,
                                  rules.ignores.patterns), [tuple(t) for t in subtrees]))
        if not self.alive or not _send_frame(self.to_it, request):
            self.alive = False
            return None
        return _StandingAnswer(self)

    def stop(self) -> None:
        self.alive = False
        for fd in (self.to_it, self.from_it):
            with suppress(OSError):
                os.close(fd)
        _reap(self.pid)


@dataclass
class _StandingAnswer(_Answer):
    helper: _Standing
    done: bool = False

    def wait(self) -> bytes | None:
        self.done = True
        payload = _read_frame(self.helper.from_it)
        if payload is None:
            self.helper.alive = False  # it died or was killed: the service's walks go on without it
        return payload

    def cancel(self) -> None:
        if not self.done:  # (its answer must be read, or it would be taken for the next walk's)
            self.wait()


class StandingHelpers:
    """Helpers the service forks before it starts its threads, lent to one walk at a time
    (a walk that finds them lent walks alone). ``close`` ends them."""

    def __init__(self, helpers: list[_Standing]) -> None:
        self._helpers = helpers
        self._lock = threading.Lock()

    @classmethod
    def start(cls, wanted: int) -> StandingHelpers | None:
        """Up to ``wanted`` standing helpers, if this process may fork them now."""
        helpers = []
        for _ in range(spare_cpus(wanted)):
            helper = _fork_standing()
            if helper is not None:
                helpers.append(helper)
        return cls(helpers) if helpers else None

    def __len__(self) -> int:
        return sum(1 for h in self._helpers if h.alive)

    def lend(self) -> list[_Standing]:
        if not self._lock.acquire(blocking=False):
            return []
        alive = [h for h in self._helpers if h.alive]
        if not alive:
            self._lock.release()
        return alive

    def give_back(self) -> None:
        self._lock.release()

    def close(self) -> None:
        with self._lock:
            for helper in self._helpers:
                helper.stop()
            self._helpers = []


def _fork_standing() -> _Standing | None:
    try:
        requests, answers = os.pipe(), os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        for fd in (*requests, *answers):
            os.close(fd)
        return None
    if pid == 0:  # pragma: no cover - runs in the helper
        os.close(requests[1])
        os.close(answers[0])
        _standing_main(requests[0], answers[1])
    os.close(requests[0])
    os.close(answers[1])
    return _Standing(pid, requests[1], answers[0])


def _standing_main(requests: int, answers: int) -> NoReturn:  # pragma: no cover - runs in the helper
    """A standing helper's whole life: walk what is asked, answer, until the service closes
    the request pipe (or ends: then the pipe closes by itself)."""
    code = 1
    try:
        _quiet_signals()
        while True:
            request = _read_frame(requests)
            if request is None:
                code = 0
                break
            (root, real_root, include, exclude, ignores), subtrees = marshal.loads(request)
            rules = ScanRules(root, real_root, compile_patterns(include), compile_patterns(exclude),
                              compile_patterns(ignores))
            if not _send_frame(answers, _walked(rules, [Subtree(*t) for t in subtrees])):
                break
    finally:
        os._exit(code)


def _send_frame(fd: int, payload: bytes) -> bool:
    try:
        data = memoryview(_FRAME.pack(len(payload)) + payload)
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        return False
    return True


def _read_frame(fd: int) -> bytes | None:
    head = _read_exactly(fd, _FRAME.size)
    if head is None:
        return None
    return _read_exactly(fd, _FRAME.unpack(head)[0])


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    try:
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        return None
    return b"".join(chunks)
