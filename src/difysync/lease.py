"""One writer per folder, across processes: the daemon hold and the per-pass write lease.

Two dataset writers on one folder would race each other's creates and deletes (double
uploads, a delete of a document the other just made), so two rules are enforced here:

* the **hold**: a running daemon (``difysync run``) holds each of its folders for its whole
  life; a second daemon on the same folder fails at once, naming the first;
* the **write lease**: every pass that may mutate the remote dataset holds the folder's
  pass lock for the length of the pass; a one-shot ``difysync reconcile`` waits its turn
  (up to a timeout), the daemon's own passes wait until told to stop.

Fairness: a daemon may run passes back to back, and a plain lock would let it re-take the
lease before a waiting one-shot ever polls. So every acquirer first takes a *turnstile*,
then the pass lock, then lets the turnstile go: whoever already waits on the pass lock
holds the turnstile, and the process that just released the pass lock queues behind it.

The locks are ``fcntl.flock`` locks on files opened for each acquisition, so the kernel
drops them when the holder dies (even by SIGKILL), and two threads of one process exclude
each other as two processes do (flock belongs to the open file, not to the process - unlike
POSIX record locks, which also vanish when *any* fd of the file is closed). All waiting is
``LOCK_NB`` polling with short sleeps, so no thread is ever stuck inside ``flock``.

Files live in ``<state_db>.locks/`` (mode 0700, files 0600), three per folder, named by a
short hash of the folder key so any path works: ``<hash>.hold``, ``<hash>.turnstile`` and
``<hash>.pass``. The hold and pass files carry the holder's JSON (``pid``, ``host``,
``since``, ``what``, ``folder``), written by each new holder and cleared on release, so a
process that cannot get in can say who is in. Lock fds are opened ``O_CLOEXEC``: a child
that was exec'd never inherits (and so never prolongs) a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import LeaseAbandoned, LeaseBusy, StateError

POLL_INTERVAL = 0.05
"""Seconds between two ``LOCK_NB`` attempts while waiting."""

HOLD_GRACE = 0.2
"""How long ``hold()`` retries before giving up: enough to ride out a status probe (which
takes the lock shared for microseconds), short enough to count as failing at once."""

HOLD_HINT = "stop that service first, or run `difysync reconcile` instead, which waits its turn"
PASS_HINT = "another pass is still writing to it; try again later or raise --lock-timeout"

_MAX_HOLDER_BYTES = 4096


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as that holder wrote it into the lock file."""

    pid: int
    host: str
    since: float
    what: str

    def describe(self) -> str:
        """``difysync run (pid 1234 on host-a since 2026-12-01 20:15:02)``, local time."""
        if self.pid <= 0:  # UNKNOWN_HOLDER: held, but the file said nothing usable
            return self.what
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.what} (pid {self.pid} on {self.host} since {when})"


UNKNOWN_HOLDER = Holder(pid=0, host="", since=0.0, what="another process")
"""What ``current_holder()`` answers for a lock that is held but whose file is empty or
garbage (a holder between acquiring and writing, or not one of ours): never None, since
None means "free"."""


class FolderLocks:
    """The hold and the write lease of one folder, shared by all processes using one state DB.

    ``what`` names this process in the lock files ("difysync run", "difysync reconcile").
    One instance per process and folder is the intended use; ``pass_lease`` opens fresh
    fds on every call, so concurrent ``with`` blocks (even on one instance) exclude each
    other, while ``hold``/``release_hold`` keep instance state and are not for concurrent use.
    """

    def __init__(self, state_db: Path, folder_key: str, *, what: str) -> None:
        self.folder = folder_key
        self.what = what
        self.directory = locks_dir(Path(state_db))
        stem = hashlib.sha256(folder_key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.hold_path = self.directory / f"{stem}.hold"
        self.turnstile_path = self.directory / f"{stem}.turnstile"
        self.pass_path = self.directory / f"{stem}.pass"
        self._hold_fd: int | None = None

    # -- the daemon hold ------------------------------------------------------------------

    def hold(self) -> None:
        """Take the daemon hold without waiting (beyond HOLD_GRACE); LeaseBusy names the holder."""
        if self._hold_fd is not None:
            return
        fd = self._open(self.hold_path)
        deadline = time.monotonic() + HOLD_GRACE
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LeaseBusy(self.folder, read_holder(self.hold_path), HOLD_HINT)
            time.sleep(POLL_INTERVAL)
        self._claim(fd)
        self._hold_fd = fd

    def release_hold(self) -> None:
        """Let the hold go (the file is cleared first); a no-op when not held."""
        fd, self._hold_fd = self._hold_fd, None
        if fd is not None:
            _release(fd)

    def daemon_holder(self) -> Holder | None:
        """Who holds the daemon hold, or None if nobody does; never blocks, never creates."""
        return _probe(self.hold_path)

    # -- the write lease ------------------------------------------------------------------

    @contextmanager
    def pass_lease(self, timeout: float | None,
                   should_stop: Callable[[], bool] = lambda: False,
                   on_wait: Callable[[Holder | None], None] | None = None) -> Iterator[Holder]:
        """Hold the folder's write lease for the ``with`` block; yields our own Holder.

        ``timeout`` (seconds) bounds the whole wait, turnstile included; None waits until
        ``should_stop()`` is true (checked every POLL_INTERVAL), which raises
        LeaseAbandoned. A timeout raises LeaseBusy naming the holder. ``on_wait`` is called
        once, with the current holder, if and when the caller has to wait.
        """
        wait = _Wait(self, timeout, should_stop, on_wait)
        fd = self._acquire_pass(wait)
        try:
            yield self._claim(fd)
        finally:
            _release(fd)

    def current_holder(self) -> Holder | None:
        """Who holds the write lease, or None if free; for status output.

        Read-only and never blocking: probes with a shared ``LOCK_NB`` (for microseconds)
        and never creates the directory. A held lock with an unreadable file answers
        UNKNOWN_HOLDER.
        """
        return _probe(self.pass_path)

    def _acquire_pass(self, wait: _Wait) -> int:
        """Turnstile, then pass lock, then turnstile released: a waiter goes before a re-taker."""
        gate = self._open(self.turnstile_path)
        try:
            # Behind the turnstile, the one in the way is the lease's holder or the one
            # next in line; once through it, only the lease's holder.
            wait.until_locked(gate, ahead=(self.pass_path, self.turnstile_path))
            self._claim(gate)  # next in line: whoever queues behind us can name us
            fd = self._open(self.pass_path)
            try:
                wait.until_locked(fd, ahead=(self.pass_path,))
            except BaseException:
                os.close(fd)
                raise
        finally:
            _release(gate)
        return fd

    # -- files ----------------------------------------------------------------------------

    def _open(self, path: Path) -> int:
        """Open (creating 0600) one lock file for a fresh acquisition."""
        _ensure_dir(self.directory)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        return fd

    def _claim(self, fd: int) -> Holder:
        """Write our Holder JSON into the lock file we now hold, so waiters can name us.

        Best effort: the lock is what excludes; if the disk is full the record is merely
        missing and waiters say "another process".
        """
        me = Holder(pid=os.getpid(), host=socket.gethostname(), since=time.time(), what=self.what)
        record = {"pid": me.pid, "host": me.host, "since": me.since, "what": me.what,
                  "folder": self.folder}
        data = json.dumps(record, ensure_ascii=True).encode("ascii")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            pass
        return me


class _Wait:
    """One acquisition's wait budget: deadline, stop check, and the one on_wait call."""

    # How long a waiter looks for a name before it says "another process": the one ahead
    # may be between taking a lock and writing its record.
    NAME_GRACE = 1.0

    def __init__(self, locks: FolderLocks, timeout: float | None,
                 should_stop: Callable[[], bool],
                 on_wait: Callable[[Holder | None], None] | None) -> None:
        self.locks = locks
        self.deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self.should_stop = should_stop
        self.on_wait = on_wait
        self.waited = False
        self.started = time.monotonic()

    def until_locked(self, fd: int, ahead: tuple[Path, ...]) -> None:
        """Poll ``fd`` with LOCK_NB until it is ours; raise LeaseBusy/LeaseAbandoned.
        ``ahead``: the lock files that name whoever is in the way, in order."""
        while not _try_lock(fd):
            self._tick(ahead)

    def _tick(self, ahead: tuple[Path, ...]) -> None:
        if not self.waited:
            holder = _first_named(ahead)
            if holder is not None or time.monotonic() - self.started >= self.NAME_GRACE:
                self.waited = True
                if self.on_wait is not None:
                    self.on_wait(holder)
        if self.should_stop():
            raise LeaseAbandoned(self.locks.folder)
        left = POLL_INTERVAL if self.deadline is None else self.deadline - time.monotonic()
        if left <= 0:
            raise LeaseBusy(self.locks.folder, _first_named(ahead), PASS_HINT)
        time.sleep(min(POLL_INTERVAL, left))


def _first_named(paths: tuple[Path, ...]) -> Holder | None:
    return next((h for h in map(read_holder, paths) if h is not None), None)


def locks_dir(state_db: Path) -> Path:
    """``<state_db>.locks``: beside the DB, so one state DB means one set of locks."""
    return state_db.with_name(state_db.name + ".locks")


def read_holder(path: Path) -> Holder | None:
    """The Holder named in a lock file, or None if absent, empty or garbage; no locking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        raw = os.read(fd, _MAX_HOLDER_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _parse_holder(raw)


def _parse_holder(raw: bytes) -> Holder | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    pid, host, since, what = (value.get(k) for k in ("pid", "host", "since", "what"))
    if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0):
        return None
    if not (isinstance(host, str) and isinstance(what, str) and what):
        return None
    if not isinstance(since, (int, float)) or isinstance(since, bool):
        return None
    return Holder(pid=pid, host=host, since=float(since), what=what)


def _probe(path: Path) -> Holder | None:
    """None if nobody holds ``path``'s lock (or it does not exist), else who does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return None
    finally:
        os.close(fd)
    return read_holder(path) or UNKNOWN_HOLDER


def _try_lock(fd: int, mode: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _release(fd: int) -> None:
    """Clear the holder record while still holding the lock, then close (which unlocks),
    so a reader never sees a departed holder's name on a lock someone else just took."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_dir(directory: Path) -> None:
    """Create the locks directory 0700 (tightening it if looser); refuse a non-directory."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"{directory} should be difysync's locks directory but is not a directory")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(directory, 0o700)


__all__ = ["HOLD_HINT", "PASS_HINT", "UNKNOWN_HOLDER", "FolderLocks", "Holder", "LeaseAbandoned",
           "LeaseBusy", "locks_dir", "read_holder"]
