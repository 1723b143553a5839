"""One walk of a folder shared with helper processes: the result of scanner.scan_tree,
sooner when there are CPUs to spare.

A walk costs a system call and some Python for every entry; on a big tree the Python is
most of it, and it holds one core. The tree is cut at a depth with enough directories to
deal out: the levels above the cut are walked here, and each directory at the cut is
left in place as a subtree, at the very point of the order where one walk would meet it.
Forked helpers take the subtrees as they go (``_Tickets``), so a command that has other
work to do before it joins the walk (its imports, its state DB, its lease) leaves more of
the tree to them; standing helpers are each lent an equal share. The columns each walk
finds are put back in their places: the result is the one a single walk gives, file for
file and in the same order, which the scan digest of marks.py depends on. A helper that
fails costs time, not files: what it did not send back is walked here.

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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .models import ScanProblem, SkipCode
from .scanner import (DEFAULT_IGNORES, FileColumns, ScanResult, ScanRules, Split, Subtree, compile_patterns,
                      scan_rules, sorted_problems, unreadable_root, walk_below)

__all__ = ["StandingHelpers", "Walk", "begin_scan", "spare_cpus"]

SPLIT_MIN_SUBTREES = 8  # fewer directories than this at every depth tried: no helper
SPLIT_WANTED = 64  # enough subtrees that whoever takes the last one does not keep the rest waiting
SPLIT_MAX_DEPTH = 3
SPLIT_MAX_HEAD = 5_000  # files above the cut: cutting deeper would walk them again
_FRAME = struct.Struct("!Q")  # a standing helper's messages: their length, then marshal data
_TICKET = struct.Struct("!I")  # one batch of subtrees, by the index of its first
MAX_TICKETS = 1024  # 4 KiB of tickets: within PIPE_BUF, so the pipe takes them in one atomic write


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


class _Tickets:
    """The subtrees of one walk, dealt to whoever asks next: a pipe holding one ticket per
    batch of consecutive subtrees, written whole before the helpers are forked. A read of
    one ticket is atomic between the processes sharing the pipe, and once all are taken a
    read finds the end: every subtree is taken by exactly one walker."""

    def __init__(self, fd: int, count: int, batch: int) -> None:
        self.fd, self.count, self.batch = fd, count, batch

    @classmethod
    def deal(cls, count: int) -> _Tickets | None:
        """Tickets for ``count`` subtrees; None if no pipe can be had."""
        batch = -(-count // MAX_TICKETS)
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return None
        try:
            os.write(write_fd, b"".join(_TICKET.pack(i) for i in range(0, count, batch)))
        except OSError:
            os.close(read_fd)
            return None
        finally:
            os.close(write_fd)
        return cls(read_fd, count, batch)

    def take(self) -> range:
        """The next batch of subtree indices; empty when none is left."""
        try:
            ticket = os.read(self.fd, _TICKET.size)
        except OSError:
            return range(0)
        if len(ticket) != _TICKET.size:
            return range(0)
        start = _TICKET.unpack(ticket)[0]
        return range(start, min(start + self.batch, self.count))

    def taken(self) -> Iterator[int]:
        """Subtree indices, batch after batch, until none is left."""
        while batch := self.take():
            yield from batch

    def close(self) -> None:
        with suppress(OSError):
            os.close(self.fd)


class Walk:
    """A scan begun by begin_scan: its helpers, if any, are at work."""

    def __init__(self, rules: ScanRules, root_error: str | None) -> None:
        self.rules, self.root_error = rules, root_error
        self._problems: set[ScanProblem] = set()
        self._head: FileColumns | None = None  # the levels above the cut, when cut
        self._subtrees: list[Subtree] = []
        self._own: Iterable[int] = ()  # the subtrees walked here: a share, or tickets as they come
        self._tickets: _Tickets | None = None
        self._answers: list[_Answer] = []
        self._standing: StandingHelpers | None = None
        self.walked_here = 0  # subtrees this process walked (the rest came from helpers)
        self._closed = False

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Closed: given up, or its result taken."""
        return self._closed

    @property
    def shared(self) -> int:
        """How many helpers work on this walk."""
        return len(self._answers)

    def share(self, forked: int, standing: StandingHelpers | None) -> None:
        """Cut the tree and have helpers walk part of its subtrees."""
        lent = standing.lend() if standing is not None else []
        if not forked and not lent:
            return
        self._head, self._subtrees = _cut(self.rules, self._problems)
        self._own = range(len(self._subtrees))
        if len(self._subtrees) >= SPLIT_MIN_SUBTREES:
            if lent:
                self._lend(lent)
            else:
                self._fork(forked)
        if lent:
            self._standing = standing

    def _lend(self, lent: list[_Standing]) -> None:
        """Standing helpers each get an equal share, dealt in turn; this process the first."""
        workers = 1 + len(lent)
        self._own = range(0, len(self._subtrees), workers)
        for n, helper in enumerate(lent, start=1):
            share = range(n, len(self._subtrees), workers)
            answer = helper.ask(self.rules, [(i, self._subtrees[i]) for i in share])
            if answer is not None:
                self._answers.append(answer)

    def _fork(self, forked: int) -> None:
        """Forked helpers take tickets from the start; this process joins them when it
        asks for the result."""
        tickets = _Tickets.deal(len(self._subtrees))
        if tickets is None:
            return
        for _ in range(forked):
            answer = _fork_helper(self.rules, self._subtrees, tickets)
            if answer is not None:
                self._answers.append(answer)
        self._tickets, self._own = tickets, tickets.taken()

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
        self._closed = True
        for answer in self._answers:
            answer.cancel()
        self._answers = []
        if self._tickets is not None:
            self._tickets.close()
            self._tickets = None
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
        self.walked_here = len(walked)
        for answer in self._answers:
            for i, columns in _columns(answer.wait(), len(self._subtrees), problems).items():
                walked.setdefault(i, columns)
        self._answers = []
        for i in range(len(self._subtrees)):  # what a failed helper did not send back
            if i not in walked:
                walked[i] = self._walk_subtree(i)
        return _assemble(self._head, self._subtrees, walked)

    def _walk_subtree(self, i: int) -> FileColumns:
        tree, found = self._subtrees[i], FileColumns()
        walk_below(self.rules, tree.path, tree.rel, tree.included, found, self._problems)
        return found


def _cut(rules: ScanRules, problems: set[ScanProblem]) -> tuple[FileColumns, list[Subtree]]:
    """The files above the cut, and the subtrees below it in the order one walk meets them.
    The cut goes down level by level until there are SPLIT_WANTED subtrees, the files above
    it grow too many, or the levels run out; of the levels tried, the one with the most
    subtrees is kept (the shallower of two with as many)."""
    kept: tuple[FileColumns, list[Subtree], set[ScanProblem]] | None = None
    for depth in range(1, SPLIT_MAX_DEPTH + 1):
        head, split, seen = FileColumns(), Split(depth), set()
        walk_below(rules, rules.root, "", False, head, seen, split)
        if kept is None or len(split.subtrees) > len(kept[1]):
            kept = head, split.subtrees, seen
        if len(split.subtrees) >= SPLIT_WANTED or len(head) > SPLIT_MAX_HEAD or not split.subtrees:
            break
    assert kept is not None
    problems |= kept[2]
    return kept[0], kept[1]


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


def _walked(rules: ScanRules, subtrees: Iterable[tuple[int, Subtree]]) -> bytes:
    """Walk the numbered ``subtrees``: their columns and problems, as a helper sends them."""
    problems: set[ScanProblem] = set()
    columns = []
    for i, tree in subtrees:
        found = FileColumns()
        walk_below(rules, tree.path, tree.rel, tree.included, found, problems)
        columns.append((i, found.paths, found.sizes.tobytes(), found.mtimes.tobytes(), found.inodes.tobytes()))
    return marshal.dumps(([(p.rel_path, p.reason, p.code.value) for p in problems], columns))


def _columns(payload: bytes | None, count: int, problems: set[ScanProblem]) -> dict[int, FileColumns]:
    """A helper's columns by subtree index (of ``count``), its problems added to
    ``problems``; nothing for a missing or damaged answer (then nothing is added)."""
    if not payload:
        return {}
    try:
        found_problems, columns = marshal.loads(payload)
        out = {i: FileColumns.from_bytes(*c) for i, *c in columns}
        found = {ScanProblem(rel, reason, SkipCode(code)) for rel, reason, code in found_problems}
    except (ValueError, TypeError, EOFError):
        return {}
    if len(out) != len(columns) or not all(isinstance(i, int) and 0 <= i < count for i in out):
        return {}
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


def _fork_helper(rules: ScanRules, subtrees: list[Subtree], tickets: _Tickets) -> _Forked | None:
    """A helper process walking the subtrees it takes tickets for, then ending; None if
    one cannot be made."""
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
        _forked_main(rules, subtrees, tickets, write_fd)
    os.close(write_fd)
    return _Forked(pid, read_fd)


def _forked_main(rules: ScanRules, subtrees: list[Subtree], tickets: _Tickets,
                 fd: int) -> NoReturn:  # pragma: no cover - runs in the helper
    """A forked helper's whole life: walk what it takes, send, end. It never returns into
    the code it was forked from, and ends without flushing or finalizing anything of the
    parent's."""
    code = 1
    try:
        _quiet_signals()
        payload = _walked(rules, ((i, subtrees[i]) for i in tickets.taken()))
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

    def ask(self, rules: ScanRules, subtrees: list[tuple[int, Subtree]]) -> _Answer | None:
        request = marshal.dumps(((rules.root, rules.real_root, rules.include.patterns, rules.exclude.patterns,
                                  rules.ignores.patterns), [(i, tuple(t)) for i, t in subtrees]))
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
            if not _send_frame(answers, _walked(rules, [(i, Subtree(*t)) for i, t in subtrees])):
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
